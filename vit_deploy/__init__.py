"""vit-deploy: a Vision Transformer from PyTorch to production."""

from .checkpoints import load_model, save_model
from .config import PRESETS, Preprocess, ViTConfig, get_preset
from .model import VisionTransformer, create_model

__version__ = "0.1.0"

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
