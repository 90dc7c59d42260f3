"""The Vision Transformer and the parts it is made of (``layers``)."""

from vit_deploy.model.vit import VisionTransformer, create_model

__all__ = ["VisionTransformer", "create_model"]
