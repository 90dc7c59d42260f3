"""Triton kernels, installed as ``vit_deploy.kernels``.

``attention(q, k, v)``: fused FlashAttention-2-style forward for (B, N, H, d)
tensors, registered as the custom op ``torch.ops.vit_deploy.attention``.
"""

from vit_deploy.errors import KernelUnavailableError


class TritonNotInstalledError(KernelUnavailableError, ImportError):
    """Triton is missing. Also an ImportError, so ``attention='triton'`` fails when the
    model is built (as a ConfigError), not at its first forward."""


try:
    import triton  # noqa: F401
except ImportError as exc:
    raise TritonNotInstalledError(
        f"vit_deploy.kernels needs Triton ({exc}): pip install 'triton>=3.2' (Linux); "
        f"or use attention='sdpa' or 'math'"
    ) from exc

from vit_deploy.kernels.ops import (  # noqa: E402
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    attention,
    check_device_support,
    check_inputs,
)

__all__ = [
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "TritonNotInstalledError",
    "attention",
    "check_device_support",
    "check_inputs",
]
