#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then the whole suite on the CPU.
# Triton kernels run under the interpreter when there is no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    export TRITON_INTERPRET=1
fi
exec .venv/bin/python -m pytest -q "$@"
