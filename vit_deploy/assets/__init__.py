"""The bundled default model and its held-out labeled images (package data).

Trained by ``scripts/train_default_model.py`` (seeded, a few CPU minutes) on
scikit-learn's handwritten digits. Everything here works offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from vit_deploy.errors import ArtifactError

ASSETS_DIR = Path(__file__).parent
DEFAULT_MODEL_DIR = ASSETS_DIR / "default_model"
HELDOUT_DIR = ASSETS_DIR / "heldout"


def load_default_model(attention: str = "math", **overrides):
    """The bundled digits ViT (32x32 input, 10 classes) with its labels and preprocessing."""
    from vit_deploy.checkpoints.load import load_model

    if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        raise ArtifactError(
            f"expected the bundled default model in {DEFAULT_MODEL_DIR}, found none; "
            "run scripts/train_default_model.py"
        )
    return load_model(DEFAULT_MODEL_DIR, attention=attention, **overrides)


def heldout_set() -> list[tuple[Path, int]]:
    """The held-out labeled images: (PNG path, class index) pairs."""
    index_path = HELDOUT_DIR / "index.json"
    if not index_path.is_file():
        raise ArtifactError(f"expected the held-out index {index_path}, found none")
    index = json.loads(index_path.read_text())
    return [(HELDOUT_DIR / item["file"], int(item["label"])) for item in index["images"]]


def training_report() -> dict:
    """Accuracy, seed and timing recorded when the default model was trained."""
    return json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
