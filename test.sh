#!/usr/bin/env bash
# Runs the test suite: `./test.sh` (extra arguments go to pytest, e.g. `./test.sh -k freezer`),
# in two processes (pytest-xdist; the tests of one file stay in one process, so each module
# fixture is built once: --dist=loadfile).
# Uses the virtual environment in $FREEZER_VENV (default .venv), creating it and installing
# requirements.txt when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
source ./venv.sh
exec "$PY" -m pytest -q -n 2 --dist=loadfile tests "$@"
