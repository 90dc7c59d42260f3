#!/usr/bin/env bash
# The one-shot GPU check (see scripts/gpu_check.py): kernel tests, attention benchmark,
# vit-bench on ViT-B/16 and, where TensorRT imports, one engine build, in <= 8 minutes.
#   scripts/gpu_check.sh [--dry-run] [OUT_DIR]     (OUT_DIR default: gpu_results/)
# Committed results live in benchmarks/results/gpu/ (scripts/gpu_check.sh benchmarks/results/gpu).
# Python: $PYTHON, else this checkout's .venv, else python3. Nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
