#!/usr/bin/env bash
# Create .venv (if missing) and install dermbatch into it; EXTRAS selects optional dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${EXTRAS:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
