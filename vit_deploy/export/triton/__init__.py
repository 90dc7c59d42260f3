"""Triton Inference Server model repositories (``write_triton_model``)."""

from vit_deploy.export.triton.repository import (
    TritonModel,
    TritonOptions,
    artifact_profile,
    write_triton_model,
)

__all__ = ["TritonModel", "TritonOptions", "artifact_profile", "write_triton_model"]
