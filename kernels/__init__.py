"""Triton kernels, installed as ``vit_deploy.kernels``.

``attention(q, k, v)``: fused FlashAttention-2-style forward for (B, N, H, d)
tensors, registered as the custom op ``torch.ops.vit_deploy.attention``.
"""

import sys

if __name__ != "vit_deploy.kernels":
    # This folder was found as a top-level "kernels": the checkout's root is on sys.path
    # (``python -m`` or ``-c`` run from the repo). That name belongs to the PyPI project
    # "kernels", which transformers imports; shadowing it breaks transformers. Load the
    # real one in our place, or fail as if this folder were not on the path.
    import importlib.machinery
    import importlib.util
    import os

    _root = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
    _elsewhere = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec(__name__, _elsewhere)
    if _spec is None:
        raise ModuleNotFoundError(
            f"No module named {__name__!r} (the folder {os.path.dirname(__file__)} is "
            f"vit_deploy.kernels, not a top-level {__name__!r})",
            name=__name__,
        )
    _real = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _real  # the import statement returns what sys.modules holds
    try:
        _spec.loader.exec_module(_real)
    except BaseException:
        sys.modules.pop(__name__, None)
        raise
else:
    from vit_deploy.errors import TritonNotInstalledError

    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise TritonNotInstalledError(
            f"vit_deploy.kernels needs Triton ({exc}): pip install 'triton>=3.2' (Linux); "
            f"or use attention='sdpa' or 'math'"
        ) from exc

    from vit_deploy.kernels.ops import (
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
