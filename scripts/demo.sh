#!/usr/bin/env bash
# The main job on a fresh machine: set up (idempotent), then export the bundled default
# model to ONNX, fp32 and fp16, each verified against PyTorch by the parity gate.
# Artifacts: ./artifacts/default-fp32 and ./artifacts/default-fp16 (model.onnx + manifest.json).
# A failed gate exits non-zero and writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vit-export --fmt onnx --precision fp32 --out artifacts/default-fp32 "$@"
.venv/bin/vit-export --fmt onnx --precision fp16 --out artifacts/default-fp16 "$@"
# Load what was written, through the runtime API, and classify a few held-out digits.
.venv/bin/python - <<'PY'
from vit_deploy.assets import heldout_set
from vit_deploy.preprocess import preprocess_batch
from vit_deploy.runtime import load_backend

items = heldout_set()[:8]
for directory in ("artifacts/default-fp32", "artifacts/default-fp16"):
    backend = load_backend(directory)  # manifest and sha256 checked
    pre = backend.config.preprocess
    logits = backend(preprocess_batch([path for path, _ in items], pre))["logits"]
    labels = backend.config.labels
    got = " ".join(labels[i] for i in logits.argmax(1))
    want = " ".join(labels[label] for _, label in items)
    print(f"{directory} ({backend.name}, {', '.join(backend.providers)}): predicted {got} | true {want}")
PY
