# Sourced by demo.sh and test.sh: makes sure $FREEZER_VENV (default .venv) exists with
# requirements.txt installed, and sets PY to its python.
VENV="${FREEZER_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating virtual environment $VENV ..." >&2
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.requirements.sha"
want="$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing requirements.txt into $VENV ..." >&2
  "$PY" -m pip install -q --upgrade pip >&2
  "$PY" -m pip install -q -r requirements.txt >&2
  "$PY" -m pip install -q --no-deps -r requirements-nodeps.txt >&2
  echo "$want" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
