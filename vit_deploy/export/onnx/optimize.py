"""Pick the graph ONNX Runtime runs fastest, by measuring rather than assuming.

Candidates:

``plain``             the exporter's graph; ONNX Runtime applies its own session-time
                      optimisations (ORT_ENABLE_ALL) when it loads it. Standard ONNX only,
                      so TensorRT can build from it too.
``ort-attention``     plain + our pass that fuses each attention block into one
                      ``com.microsoft.Attention`` node (``attention_fusion``); cheap to make.
``ort-transformers``  ort-attention + ``onnxruntime.transformers.optimizer.optimize_model(
                      model_type="vit")``: SkipLayerNormalization and BiasGelu too. Costs
                      ~15 s on ViT-B/16 and measured slower on CPU here (see
                      benchmarks/results), so only on request.

``auto`` times plain against ort-attention: each candidate must pass the parity gate on
a few samples, then each is timed at batch 1 and the fastest correct one is kept.
``plain`` wins ties (within 3 %): it is the portable one.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from vit_deploy.config import ViTConfig
from vit_deploy.errors import ArtifactError, ExportError
from vit_deploy.export.onnx.attention_fusion import fuse_attention
from vit_deploy.export.parity import check_gate, compare_outputs
from vit_deploy.runtime.ort_backend import OrtBackend

log = logging.getLogger(__name__)
PLAIN = "plain"
ORT_ATTENTION = "ort-attention"
ORT_TRANSFORMERS = "ort-transformers"
TIE_MARGIN = 0.03


@dataclass
class Candidate:
    name: str
    path: Path
    proto: onnx.ModelProto
    info: dict = field(default_factory=dict)


def build_candidate(
    name: str, plain: onnx.ModelProto, config: ViTConfig, directory: Path
) -> Candidate:
    """Write candidate ``name`` (made from the plain graph, which is left unchanged)."""
    if name not in (ORT_ATTENTION, ORT_TRANSFORMERS):
        raise ExportError(
            f"graph variant: expected {ORT_ATTENTION} or {ORT_TRANSFORMERS}, got {name!r}"
        )
    proto = copy.deepcopy(plain)
    fused = fuse_attention(proto, config.num_heads)
    if fused == 0:
        raise ExportError("the attention fusion pass matched no attention block")
    if fused < config.depth:
        log.warning(
            "FUSION: attention pass fused %d of %d blocks (the rest stay MatMul/Softmax/MatMul)",
            fused,
            config.depth,
        )
    path = directory / f".{ORT_ATTENTION}.onnx"
    onnx.save_model(proto, str(path))
    candidate = Candidate(ORT_ATTENTION, path, proto, {"attention_fused": fused})
    if name == ORT_ATTENTION:
        return candidate
    out = directory / f".{ORT_TRANSFORMERS}.onnx"
    optimized, stats = ort_transformers_optimize(path, config, out)
    path.unlink(missing_ok=True)
    return Candidate(ORT_TRANSFORMERS, out, optimized, {"attention_fused": fused, **stats})


def ort_transformers_optimize(
    path: Path, config: ViTConfig, out: Path
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Write the transformers-optimised graph of ``path`` to ``out``: (model, fusion stats)."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise ExportError(f"onnxruntime.transformers is not available: {exc}") from exc
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            str(path),
            model_type="vit",
            num_heads=config.num_heads,
            hidden_size=config.embed_dim,
            opt_level=0,  # the python fusions only; ORT's own pass runs at session load
            use_gpu=False,
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        onnx.save_model(optimized.model, str(out))
    except Exception as exc:  # noqa: BLE001  (the optimizer raises assorted errors)
        raise ExportError(
            f"ORT transformers optimizer failed: {type(exc).__name__}: {exc}"
        ) from exc
    return optimized.model, stats


def time_backends(backends: dict[str, OrtBackend], pixels: np.ndarray, iters: int) -> dict:
    """Median milliseconds of one call per backend: one warm-up call each, then ``iters``
    rounds that call every backend once (interleaved, so load changes hit all alike)."""
    times: dict[str, list[float]] = {name: [] for name in backends}
    for backend in backends.values():
        backend(pixels)
    for _ in range(max(1, iters)):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend(pixels)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_candidates(
    candidates: dict[str, Path],
    config: ViTConfig,
    pixels: np.ndarray,
    reference: dict[str, np.ndarray],
    precision: str,
    iters: int = 3,
    threads: int | None = None,
) -> dict:
    """``{"chosen": name, "candidates": {name: {...timing and parity...}}}``."""
    results: dict[str, dict] = {}
    correct: dict[str, OrtBackend] = {}
    for name, path in candidates.items():
        entry: dict = {"file_mb": round(path.stat().st_size / 2**20, 2)}
        results[name] = entry
        try:
            backend = OrtBackend.from_onnx(path, config, threads=threads)
        except ArtifactError as exc:
            entry.update(correct=False, error=str(exc))
            continue
        report = compare_outputs({k: reference[k] for k in backend.output_names}, backend(pixels))
        entry["correct"] = check_gate(report, precision).passed
        entry["cosine_min"] = min(o.cosine_min for o in report.outputs.values())
        if entry["correct"]:
            correct[name] = backend
    if not correct:
        raise ExportError(
            "no graph variant passed the parity gate: "
            + "; ".join(
                f"{n}: {r.get('error') or 'cosine ' + str(r.get('cosine_min'))}"
                for n, r in results.items()
            )
        )
    timings = time_backends(correct, pixels[:1], iters)
    for name, ms in timings.items():
        results[name]["batch1_ms"] = round(ms, 3)
    chosen = min(timings, key=timings.get)
    if PLAIN in timings and timings[chosen] > timings[PLAIN] * (1 - TIE_MARGIN):
        chosen = PLAIN
    return {"chosen": chosen, "timing_iters": iters, "candidates": results}
