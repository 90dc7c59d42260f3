"""vit-deploy: a Vision Transformer from PyTorch to production."""

from vit_deploy.config import PRESETS, Preprocess, ViTConfig, get_preset

__version__ = "0.1.0"

# The model and checkpoint code import torch (~3 s, ~500 MB resident). They load on
# first use, so serving an ONNX artifact (vit-embed, the ORT runtime) never pays for it.
_LAZY = {
    "VisionTransformer": "model",
    "create_model": "model",
    "load_model": "checkpoints",
    "save_model": "checkpoints",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "Preprocess",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "get_preset",
    "load_model",
    "save_model",
    "__version__",
]
