"""What every backend is benchmarked on: the same inputs for all of them (the model is a
``vit_deploy.checkpoints.spec.ModelSpec``, resolved like every other tool's).

- Bundled default model: the labeled held-out digits, decoded from PNG and preprocessed
  as serving does it. They are the parity set (so accuracy can be read off every
  backend) and, tiled, the timing batches.
- Any other model: no labels, so accuracy is "n/a". The parity set is the export
  verifier's (``export.verify.parity_inputs``: held-out images resized to the model,
  plus seeded random pixels), and the timing batches are tiled from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from vit_deploy.checkpoints.spec import ModelSpec

NO_LABELS = "n/a: no labeled held-out set for this model (only the bundled default model has one)"


@dataclass
class BenchInputs:
    timing: np.ndarray  # (max batch, C, S, S) float32: batch B times timing[:B]
    parity: np.ndarray  # (n, C, S, S) float32
    labels: np.ndarray | None  # (n,) class indices, or None (no labeled set)
    description: str
    prepare_s: float

    def to_dict(self) -> dict:
        return {
            "parity_samples": int(len(self.parity)),
            "labeled": self.labels is not None,
            "description": self.description,
            "prepare_s": round(self.prepare_s, 3),
        }


def tile_rows(pixels: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows from ``pixels``, repeating them in order when there are fewer."""
    reps = -(-n // len(pixels))
    return np.ascontiguousarray(np.concatenate([pixels] * reps)[:n])


def build_inputs(
    spec: ModelSpec, config, max_batch: int, parity_samples: int | None = None
) -> BenchInputs:
    start = time.perf_counter()
    if spec.is_default and config.in_chans == 3:
        from vit_deploy.assets import heldout_set
        from vit_deploy.preprocess import preprocess_batch

        items = heldout_set()
        if parity_samples is not None:
            items = items[:parity_samples]
        pixels = preprocess_batch([p for p, _ in items], config.preprocess).numpy()
        labels = np.asarray([label for _, label in items], dtype=np.int64)
        what = f"{len(items)} labeled held-out digits (PNG, preprocessed as served)"
    else:
        from vit_deploy.export.verify import parity_inputs

        found = parity_inputs(config, parity_samples)
        pixels, labels = found.pixels, None
        what = (
            f"{found.real} held-out images resized to the model and "
            f"{len(pixels) - found.real} seeded random pixel arrays (export.verify.parity_inputs)"
        )
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    return BenchInputs(
        timing=tile_rows(pixels, max_batch),
        parity=pixels,
        labels=labels,
        description=what,
        prepare_s=time.perf_counter() - start,
    )
