"""Calibration images for INT8: real images decoded with the model's own preprocessing.

By default the bundled held-out digits, taken from the END of the held-out list: the
parity gate uses the first rows (``verify.parity_inputs``), so for the bundled model the
images that set the activation ranges are not the ones that judge the result (when the
set is large enough; the source records the overlap). A user folder is read in sorted
order, the first ``size`` images, so a calibration is reproducible.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_deploy.config import ViTConfig
from vit_deploy.errors import ConfigError

DEFAULT_CALIBRATION_SIZE = 128
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
READER_BATCH = 16  # images per calibration run: bounds the calibrator's memory


@dataclass(frozen=True)
class CalibrationSet:
    pixels: np.ndarray  # (n, C, S, S) float32, preprocessed
    source: dict  # for the manifest: where the images came from

    def reader(self):
        """An ONNX Runtime ``CalibrationDataReader`` over these pixels."""
        return PixelReader(self.pixels)


def _preprocess(paths: list[Path], config: ViTConfig) -> np.ndarray:
    from vit_deploy.preprocess import preprocess_one

    pre = config.preprocess
    if pre.img_size != config.img_size:  # a config built without its preprocessing
        pre = dataclasses.replace(pre, img_size=config.img_size)
    return np.ascontiguousarray(np.stack([preprocess_one(p, pre) for p in paths]), np.float32)


def calibration_set(
    config: ViTConfig,
    directory: str | os.PathLike | None = None,
    size: int = DEFAULT_CALIBRATION_SIZE,
    gate_rows: int = 0,
) -> CalibrationSet:
    """``size`` preprocessed images from ``directory``, or from the bundled held-out set.
    ``gate_rows``: how many held-out images the parity gate reads (to report overlap)."""
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"calibration size: expected a positive int, got {size!r}")
    if directory is None:
        from vit_deploy.assets import HELDOUT_DIR, heldout_set

        paths = [p for p, _ in heldout_set()]
        chosen = paths[-size:]
        overlap = max(0, gate_rows - (len(paths) - len(chosen)))
        source = {
            "kind": "bundled held-out digits (tail of the list)",
            "directory": str(HELDOUT_DIR),
            "images": len(chosen),
            "overlap_with_parity_images": overlap,
        }
        return CalibrationSet(_preprocess(chosen, config), source)
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(f"calibration: expected a folder of images, got {str(folder)!r}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(
            f"calibration: expected images ({', '.join(IMAGE_SUFFIXES)}) in {folder}, found none"
        )
    chosen = paths[:size]
    source = {"kind": "user folder", "directory": str(folder), "images": len(chosen)}
    return CalibrationSet(_preprocess(chosen, config), source)


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class PixelReader(_reader_base()):
    """Feeds ``pixels`` to the calibrator in batches of ``READER_BATCH``."""

    def __init__(self, pixels: np.ndarray, batch: int = READER_BATCH):
        self._batches = [pixels[i : i + batch] for i in range(0, len(pixels), batch)]
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {"pixels": self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0
