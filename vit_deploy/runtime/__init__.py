"""One call over PyTorch, ONNX Runtime and TensorRT backends.

>>> backend = load_backend("artifacts/default-fp32")      # an exported dir -> ONNX Runtime
>>> out = backend(pixels)                                  # (B, 3, S, S) float32
>>> out["logits"].shape, out["embedding"].shape

``load_backend(model)`` wraps a ``VisionTransformer`` (PyTorch eager) the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vit_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError
from vit_deploy.manifest import read_manifest
from vit_deploy.runtime.base import (
    BACKEND_NAMES,
    Backend,
    canonical_backend,
    check_pixels,
    default_output_names,
)


def _load_ort(directory: Path, **kw) -> Backend:
    from vit_deploy.runtime.ort_backend import OrtBackend

    return OrtBackend.from_artifact(directory, **kw)


def _load_openvino(directory: Path, **kw) -> Backend:
    from vit_deploy.runtime.openvino_backend import OpenVinoBackend

    return OpenVinoBackend.from_artifact(directory, **kw)


def _load_trt(directory: Path, **kw) -> Backend:
    from vit_deploy.runtime.tensorrt.backend import (
        TensorRTBackend,  # imports tensorrt only when constructed
    )

    return TensorRTBackend(directory, **kw)


# artifact format (manifest "artifact.format") -> {backend name: loader(directory, **kw)};
# the first entry is what backend="auto" picks.
ARTIFACT_LOADERS: dict[str, dict[str, Callable[..., Backend]]] = {
    "onnx": {"ort": _load_ort, "openvino": _load_openvino},
    "trt": {"trt": _load_trt},
}


def register_artifact_loader(fmt: str, backend: str, loader: Callable[..., Backend]) -> None:
    ARTIFACT_LOADERS.setdefault(fmt, {})[canonical_backend(backend)] = loader


def artifact_backend(directory: str | os.PathLike, backend: str = "auto") -> str:
    """The canonical name of the backend ``load_backend(directory, backend)`` would use."""
    return _artifact_loader(Path(directory), canonical_backend(backend))[0]


def _artifact_loader(directory: Path, backend: str) -> tuple[str, Callable[..., Backend]]:
    if not directory.exists():
        raise ArtifactError(
            f"expected an artifact directory, got {str(directory)!r} (no such path)"
        )
    manifest = read_manifest(directory)
    fmt = manifest["artifact"]["format"]
    loaders = ARTIFACT_LOADERS.get(fmt)
    if not loaders:
        raise BackendUnavailableError(
            f"{directory}: no backend here runs {fmt!r} artifacts; expected one of "
            f"{sorted(ARTIFACT_LOADERS)}"
        )
    name = next(iter(loaders)) if backend == "auto" else backend
    if name not in loaders:
        raise ConfigError(
            f"expected one of {['auto', *loaders]} for a {fmt!r} artifact, got {backend!r}",
            option="backend",
        )
    return name, loaders[name]


def load_backend(source, backend: str = "auto", **kw) -> Backend:
    """A backend for ``source``: an artifact directory (its manifest says which format)
    or a ``VisionTransformer`` (PyTorch). ``kw`` go to the backend's loader
    (e.g. ``providers=``, ``threads=`` for ONNX Runtime). ``backend`` takes the canonical
    names (``torch``, ``torch-triton``, ``ort``, ``openvino``, ``trt``) and their aliases
    (``tensorrt``, ``onnxruntime``, ...)."""
    backend = canonical_backend(backend)
    if not isinstance(source, (str, os.PathLike)):
        from vit_deploy.model.vit import VisionTransformer  # imports torch: only when given a model

        if not isinstance(source, VisionTransformer):
            raise ConfigError(
                f"source: expected an artifact directory or a VisionTransformer, "
                f"got {type(source).__name__}"
            )
        if backend not in ("auto", "torch", "torch-triton"):
            raise ConfigError(
                f"a VisionTransformer runs on 'torch' (or 'auto'), got {backend!r}",
                option="backend",
            )
        from vit_deploy.runtime.torch_backend import TorchBackend

        return TorchBackend(source, **kw)
    _, loader = _artifact_loader(Path(source), backend)
    return loader(Path(source), **kw)


__all__ = [
    "ARTIFACT_LOADERS",
    "BACKEND_NAMES",
    "artifact_backend",
    "canonical_backend",
    "Backend",
    "check_pixels",
    "default_output_names",
    "load_backend",
    "register_artifact_loader",
]
