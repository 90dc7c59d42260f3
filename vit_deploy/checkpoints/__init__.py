"""Checkpoints in, our model out: readers (``load``), foreign layouts (``convert``) and the
one model specification every tool resolves (``spec``)."""

from vit_deploy.checkpoints.load import load_model, resample_pos_embed, save_model

__all__ = ["load_model", "resample_pos_embed", "save_model"]
