"""The interface every backend shares: preprocessed pixels in, named outputs out.

A backend has ``.name`` (one of ``BACKEND_NAMES``), ``.config`` (the ``ViTConfig``),
``.manifest`` (dict or None), ``.output_names``, ``.thread_safe`` (whether ``__call__`` may
run from several threads at once), and ``__call__(pixels) -> {"logits": ..., "embedding":
...}``: numpy float32 in, numpy out, on every backend. GPU backends also have
``run_device(tensor) -> {name: tensor}``, which keeps both ends on the device (for
benchmarks that must not time host copies). Inputs are checked before inference, with
errors that say what was expected.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import numpy as np

from vit_deploy.config import ViTConfig
from vit_deploy.errors import BackendUnavailableError, InputDTypeError, InputShapeError
from vit_deploy.preprocess import is_tensor

INPUT_NAME = "pixels"
INPUT_DTYPE = np.float32
# Canonical backend names: the one spelling in output, manifests and results.
BACKEND_NAMES = ("torch", "torch-triton", "torch-compile", "ort", "openvino", "trt")


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.12.0.36' -> (10, 12, 0), '1.26.0.dev2026' -> (1, 26, 0): a library's release,
    for comparing with a minimum."""
    return tuple(int(p) for p in re.findall(r"\d+", str(version))[:3])


# Other spellings users type; accepted wherever a backend is named.
BACKEND_ALIASES = {
    "pytorch": "torch",
    "triton": "torch-triton",
    "onnxruntime": "ort",
    "onnx-runtime": "ort",
    "ov": "openvino",
    "tensorrt": "trt",
}


def canonical_backend(name: str) -> str:
    """``name`` in its one spelling ("tensorrt" -> "trt"); unknown names pass through, for
    the caller to refuse with its own list of choices."""
    key = str(name).strip().lower()
    return BACKEND_ALIASES.get(key, key)


def default_output_names(config: ViTConfig) -> list[str]:
    """Both outputs when the model has a classification head, else the embedding only."""
    return ["logits", "embedding"] if config.num_classes else ["embedding"]


def check_pixels(pixels: object, config: ViTConfig) -> np.ndarray:
    """A (B, C, S, S) float32 batch as a C-contiguous numpy array, or a typed error."""
    if is_tensor(pixels):  # without importing torch: ONNX Runtime serving never needs it
        if str(pixels.dtype) != "torch.float32":
            raise InputDTypeError(f"expected float32 pixels, got {pixels.dtype}")
        pixels = pixels.detach().cpu().numpy()
    if not isinstance(pixels, np.ndarray):
        raise InputDTypeError(
            f"expected a numpy array or torch tensor of float32 pixels, got {type(pixels).__name__}"
        )
    if pixels.dtype != INPUT_DTYPE:
        raise InputDTypeError(
            f"expected float32 pixels, got {pixels.dtype}; preprocess with "
            "vit_deploy.preprocess.preprocess_batch or cast with .astype(np.float32)"
        )
    expected = ("B", config.in_chans, config.img_size, config.img_size)
    if pixels.ndim != 4:
        raise InputShapeError(
            f"expected a 4-D batch of shape {expected}, got {pixels.ndim}-D shape {pixels.shape}"
        )
    if pixels.shape[0] < 1 or tuple(pixels.shape[1:]) != expected[1:]:
        raise InputShapeError(f"expected shape {expected} with B >= 1, got {pixels.shape}")
    return np.ascontiguousarray(pixels)


def run_batched(backend, pixels: np.ndarray, batch: int, *, pad: bool = False) -> dict:
    """Every row's outputs, ``batch`` rows per call. ``pad``: fill the last call up to
    ``batch`` by repeating rows from the start (so every call has the same batch size, as
    a benchmark case or a static engine needs); the filler rows' outputs are dropped."""
    if batch < 1 or len(pixels) < 1:
        raise InputShapeError(f"expected batch >= 1 and >= 1 row, got {batch} and {len(pixels)}")
    parts = []
    for start in range(0, len(pixels), batch):
        chunk = pixels[start : start + batch]
        rows = len(chunk)
        if pad and rows < batch:
            fill = np.concatenate([pixels] * (-(-batch // len(pixels))))[: batch - rows]
            chunk = np.ascontiguousarray(np.concatenate([chunk, fill]))
        out = backend(chunk)
        parts.append({k: np.asarray(v)[:rows] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Backend(ABC):
    """Base class: subclasses implement ``_run`` on an already checked numpy batch."""

    name: str = "backend"
    thread_safe: bool = False  # conservative: callers serialise unless a backend says so

    def __init__(
        self, config: ViTConfig, output_names: list[str], manifest: dict | None = None
    ) -> None:
        self.config = config
        self.output_names = list(output_names)
        self.manifest = manifest

    def check_input(self, pixels: object) -> np.ndarray:
        return check_pixels(pixels, self.config)

    def run_device(self, pixels):
        """Device-resident inputs and outputs; only GPU backends have it."""
        raise BackendUnavailableError(
            f"expected a GPU backend for device-resident runs, got {self.name!r}; call it "
            "with numpy pixels instead"
        )

    def __call__(self, pixels) -> dict[str, np.ndarray]:
        return self._run(self.check_input(pixels))

    @abstractmethod
    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]: ...

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"{type(self).__name__}(name={self.name!r}, img_size={cfg.img_size}, "
            f"outputs={self.output_names})"
        )
