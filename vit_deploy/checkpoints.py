"""Checkpoint import and our own format.

Our format is a directory with ``config.json`` (a ``ViTConfig`` dict) and
``model.safetensors`` (timm-named tensors). Everything is read from local files;
nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ViTConfig
from .errors import CheckpointError, CheckpointMismatchError
from .model import VisionTransformer

NATIVE_CONFIG = "config.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT = "vit_deploy.checkpoint/1"


def check_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Raise one error listing every missing, unexpected and wrongly shaped tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        (k, tuple(expected[k].shape), tuple(state[k].shape))
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(missing, unexpected, wrong, source=source)


def save_model(model: VisionTransformer, directory: str | os.PathLike) -> Path:
    """Write our format atomically: a temp directory renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / NATIVE_WEIGHTS), metadata={"format": NATIVE_FORMAT})
    config = {"format": NATIVE_FORMAT, **model.config.to_dict()}
    (tmp / NATIVE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def load_native(
    directory: str | os.PathLike, attention: str = "math", **overrides
) -> VisionTransformer:
    directory = Path(directory)
    config_path, weights_path = directory / NATIVE_CONFIG, directory / NATIVE_WEIGHTS
    for p in (config_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"expected {p.name} in {directory}, found no such file")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: expected JSON, could not parse it ({exc})") from exc
    raw.pop("format", None)
    cfg = ViTConfig.from_dict(raw)
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(
            f"{weights_path}: expected a safetensors file, could not read it ({exc})"
        ) from exc
    model = VisionTransformer(cfg, attention=attention)
    check_state_dict(model, state, source=str(weights_path))
    model.load_state_dict(state)
    if overrides:
        from .model import create_model

        resized = create_model(cfg, attention=attention, seed=None, **overrides)
        resized.load_state_dict(state)  # TODO(checkpoints): resample pos_embed on img_size change
        model = resized
    return model.eval()


def load_model(
    source: str | os.PathLike, attention: str = "math", **overrides
) -> VisionTransformer:
    """A model from a checkpoint path (our format; timm, Hugging Face and .npz to come)."""
    path = Path(source)
    if path.is_dir() and (path / NATIVE_CONFIG).is_file() and (path / NATIVE_WEIGHTS).is_file():
        return load_native(path, attention=attention, **overrides)
    raise CheckpointError(f"{source}: expected a vit_deploy checkpoint directory")
