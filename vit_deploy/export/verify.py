"""Run an artifact against the PyTorch fp32 model on the same inputs and gate the result.

The inputs are real images (the bundled held-out PNGs, decoded and preprocessed to
the model's own size with its own preprocessing) plus seeded random pixels. Works
on an artifact directory, a bare ``.onnx`` file, or any ``Backend``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vit_deploy.config import ViTConfig
from vit_deploy.export.parity import GateResult, ParityReport, check_gate, compare_outputs
from vit_deploy.model.vit import VisionTransformer
from vit_deploy.runtime.base import Backend, run_batched
from vit_deploy.runtime.torch_backend import TorchBackend

# about this many multiply-adds x2 of reference + candidate work per verification
VERIFY_FLOP_BUDGET = 5e11
MIN_SAMPLES, MAX_SAMPLES = 8, 96


@dataclass(frozen=True)
class ParityInputs:
    pixels: np.ndarray  # (n, C, S, S) float32
    real: int  # the first `real` rows are held-out images, the rest random

    def to_dict(self) -> dict:
        return {
            "samples": len(self.pixels),
            "real_images": self.real,
            "random": len(self.pixels) - self.real,
        }


def default_sample_count(config: ViTConfig) -> int:
    n = int(VERIFY_FLOP_BUDGET / max(config.flops_per_image(), 1))
    return max(MIN_SAMPLES, min(MAX_SAMPLES, n))


def parity_inputs(config: ViTConfig, samples: int | None = None, seed: int = 0) -> ParityInputs:
    """Held-out images (about 3/4) and random normal pixels (the rest, at least 2)."""
    from vit_deploy.assets import heldout_set
    from vit_deploy.errors import ArtifactError
    from vit_deploy.preprocess import preprocess_batch

    n = default_sample_count(config) if samples is None else samples
    n_random = min(n, max(2, n // 4))
    n_real = n - n_random
    real = np.zeros((0, config.in_chans, config.img_size, config.img_size), np.float32)
    if n_real and config.in_chans == 3:
        try:
            paths = [path for path, _ in heldout_set()[:n_real]]
        except ArtifactError:
            paths = []
        if paths:
            pre = config.preprocess
            if pre.img_size != config.img_size:  # a config built without its preprocessing
                pre = dataclasses.replace(pre, img_size=config.img_size)
            real = preprocess_batch(paths, pre).numpy()
    rng = np.random.default_rng(seed)
    shape = (n - len(real), config.in_chans, config.img_size, config.img_size)
    noise = rng.standard_normal(shape, dtype=np.float32)
    return ParityInputs(np.ascontiguousarray(np.concatenate([real, noise])), real=len(real))


def reference_outputs(
    model: VisionTransformer, pixels: np.ndarray, output_names: list[str], batch: int = 32
) -> dict[str, np.ndarray]:
    return run_batched(TorchBackend(model, output_names), pixels, batch)


def verify_artifact(
    source: str | os.PathLike | Backend,
    reference_model: VisionTransformer,
    precision: str | None = None,
    *,
    inputs: ParityInputs | None = None,
    reference: dict[str, np.ndarray] | None = None,
    batch: int | None = None,
    raise_on_failure: bool = True,
) -> tuple[ParityReport, GateResult]:
    """Compare ``source`` (artifact dir, .onnx file or Backend) with ``reference_model``.

    ``precision`` picks the gate (default: the manifest's, else fp32). Raises
    ParityError (carrying the report) on failure unless ``raise_on_failure=False``.
    """
    backend = _as_backend(source, reference_model.config)
    if precision is None:
        manifest = backend.manifest or {}
        precision = manifest.get("precision", {}).get("mode", "fp32")
    if batch is None:
        profile = (backend.manifest or {}).get("batch_profile", {})
        batch = int(profile.get("opt", 8))
    if inputs is None:
        inputs = parity_inputs(reference_model.config)
    if reference is None:
        reference = reference_outputs(reference_model, inputs.pixels, backend.output_names)
    candidate = run_batched(backend, inputs.pixels, batch)
    report = compare_outputs({k: reference[k] for k in backend.output_names}, candidate)
    gate = check_gate(report, precision)
    if raise_on_failure:
        gate.raise_for_failure(report)
    return report, gate


def _as_backend(source, config: ViTConfig) -> Backend:
    if isinstance(source, Backend):
        return source
    from vit_deploy.runtime.ort_backend import OrtBackend

    path = Path(source)
    if path.is_dir():
        return OrtBackend.from_artifact(path)
    return OrtBackend.from_onnx(path, config)


def source_parity(
    model: VisionTransformer, inputs: ParityInputs, reference: dict[str, np.ndarray]
) -> dict:
    """The manifest's "source" section: our fp32 model against the checkpoint's own library
    on the parity inputs, fp32 gate. Raises ParityError when they differ (a loader error)."""
    from vit_deploy.checkpoints.source import source_reference
    from vit_deploy.errors import ParityError

    info = getattr(model, "checkpoint_info", None) or {}
    run_source, described = source_reference(model)
    if run_source is None:
        return {"skipped": True, "reason": described}
    theirs = run_source(inputs.pixels)
    names = [n for n in reference if n in theirs]
    if not names:
        return {"skipped": True, "reason": f"{described} defines none of {sorted(reference)}"}
    report = compare_outputs({n: theirs[n] for n in names}, {n: reference[n] for n in names})
    gate = check_gate(report, "fp32")
    scale = {n: float(np.abs(theirs[n]).max()) for n in names}
    section = {
        "passed": gate.passed,
        "library": info.get("library"),
        "reference": described,
        "gate": gate.to_dict(),
        "report": report.to_dict(),
        "max_abs_diff_over_scale": {
            n: report.outputs[n].max_abs_diff / max(scale[n], 1e-12) for n in names
        },
    }
    if not gate.passed:
        error = ParityError(
            f"source parity failed: our model differs from {described} on the same "
            f"checkpoint, so it was loaded wrong (heads, activation, eps or norm placement?); "
            "pass --config NAME or --num-heads N, or report the checkpoint. Nothing was "
            "written.\n" + gate.failure_table() + "\nmeasured:\n" + report.table()
        )
        error.report, error.gate = report, gate
        raise error
    return section
