#!/usr/bin/env bash
# Creates .venv and installs cat-adapter (with test extras) into it.
# On a machine without an NVIDIA GPU, torch==2.13.0 is installed first so that pip does not pull
# a multi-GB CUDA build; on a GPU machine pip picks the default (CUDA) build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.4"
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
.venv/bin/python -m pip install -q -e ".[test]"
echo "cat-adapter installed in .venv ($(.venv/bin/python -c 'import cat_adapter; print(cat_adapter.__version__)'))"
