#!/usr/bin/env bash
# Create ./.venv (or $VENV) with torch 2.13.0 installed FIRST, then the pinned requirements.
# Installing torch first keeps pip from pulling a newer CUDA build through another package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
# the repository itself, editable: ``bundle`` and ``scripts`` (with scripts/bench) import without sys.path edits
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, monai; print(f'environment ready: torch {torch.__version__}, monai {monai.__version__}')"
