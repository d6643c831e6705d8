#!/usr/bin/env bash
# Runs the whole freeze path on a freshly trained demo model: `./demo.sh [OUT_DIR]` (default
# ./demo, replaced on each run). Uses the virtual environment in $FREEZER_VENV (default .venv),
# creating it and installing requirements.txt when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
source ./venv.sh
OUT="${1:-demo}"
step() { echo; echo "== $*" >&2; }

step "1/4 model_gen.py: train a recommendation model, write checkpoint + SavedModel"
"$PY" model_gen.py --output_dir="$OUT/model" --steps=200 --overwrite
step "2/4 freezer.py: SavedModel -> frozen GraphDef, hash tables kept"
"$PY" freezer.py --saved_model_dir="$OUT/model/saved_model" --output_graph="$OUT/frozen.pb" \
    --overwrite
step "3/4 optimize_from_pb.py: reader outputs -> placeholders, strip, re-dump a SavedModel"
"$PY" optimize_from_pb.py --input_graph="$OUT/frozen.pb" --output_saved_model_dir="$OUT/serving" \
    --output_graph="$OUT/serving.pb" --overwrite
step "4/4 optimize_from_pb_test.py: the new model answers as the original"
"$PY" optimize_from_pb_test.py --saved_model_dir="$OUT/serving" \
    --reference_saved_model_dir="$OUT/model/saved_model"
