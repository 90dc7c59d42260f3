"""INT8 (QDQ) ONNX: ONNX Runtime static quantization, calibrated, gated, auto-repaired.

Why ONNX Runtime's ``quantize_static`` and not NVIDIA ModelOpt's ONNX PTQ: it is already
a dependency, runs on any CPU, and writes standard QuantizeLinear/DequantizeLinear pairs
that ONNX Runtime, OpenVINO and TensorRT (strongly typed, explicit quantization) all
read. We ask for what TensorRT needs (signed int8, symmetric, zero point 0, weights
per output channel), so one artifact serves all three. ModelOpt's placement is tuned for
TensorRT's fusions (and it can quantize attention's BMMs with its own rules), but it
pulls in a large CUDA-oriented stack and its CPU path is a fallback; worth revisiting
for the GPU path only.

What is quantized: the MatMul, Gemm and Conv nodes (projections, MLP, patch embedding,
head, and the two attention matmuls). LayerNorm, Softmax and GELU (Erf) stay float:
``QUANTIZED_OPS`` is the only list to change to try more.

Auto-repair: when the gate fails, each quantized node's local quantization error is
measured (signal-to-quantization-noise ratio in dB of its int8 inputs, activations and
weights, using ``onnxruntime.quantization.qdq_loss_debug``), the lowest-SQNR nodes are
kept in float (``nodes_to_exclude``), and the graph is quantized again, up to
``max_attempts``. The calibration ranges are cached across attempts (excluding a node
does not change any float tensor's range).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from vit_deploy.errors import ExportError
from vit_deploy.export.onnx.calibration import CalibrationSet, PixelReader

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
DEFAULT_MAX_ATTEMPTS = 3
REPAIR_FRACTION = 0.1  # of the quantized nodes kept float after the first failure; doubles
SENSITIVITY_SAMPLES = 8  # images whose activations are compared (memory grows with this)


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]


def quantize_qdq(
    float_path: Path,
    out_path: Path,
    calibration: CalibrationSet,
    exclude: list[str],
    cache_path: Path | None = None,
) -> None:
    """Write the QDQ model of ``float_path`` to ``out_path`` (nodes in ``exclude`` stay float)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    try:
        quantize_static(
            str(float_path),
            str(out_path),
            calibration.reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,  # symmetric signed int8: what TensorRT takes
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                # Q/DQ on the inputs of the quantized ops only: their outputs (attention
                # scores into Softmax, pre-GELU, residual adds) stay float
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
            },
            calibration_cache_path=cache_path,
        )
    except Exception as exc:  # noqa: BLE001  (the quantizer raises plain exceptions)
        raise ExportError(f"INT8 quantization failed: {type(exc).__name__}: {exc}") from exc


def node_sensitivity(float_path: Path, qdq_path: Path, pixels: np.ndarray) -> dict[str, float]:
    """{quantized node: the lowest SQNR (dB) among its int8 inputs}; low = sensitive."""
    from onnxruntime.quantization import qdq_loss_debug as dbg

    def activations(path: Path) -> dict:
        augmented = path.with_name(f".{path.stem}.augmented.onnx")
        try:
            dbg.modify_model_output_intermediate_tensors(str(path), str(augmented))
            return dbg.collect_activations(str(augmented), PixelReader(pixels))
        finally:
            augmented.unlink(missing_ok=True)

    matching = dbg.create_activation_matching(activations(qdq_path), activations(float_path))
    act_err = {k: v["qdq_err"] for k, v in dbg.compute_activation_error(matching).items()}
    weight_err = dbg.compute_weight_error(
        dbg.create_weight_matching(str(float_path), str(qdq_path))
    )
    scores = {}
    for node in onnx.load(str(float_path), load_external_data=False).graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        errs = [act_err[i] for i in node.input if i in act_err]
        errs += [weight_err[i] for i in node.input if i in weight_err]
        if errs:
            scores[node.name] = float(min(errs))
    return scores


def next_exclusions(scores: dict[str, float], excluded: list[str], total: int, attempt: int):
    """The ``k`` most sensitive nodes not yet excluded (k doubles per failed attempt)."""
    k = max(1, math.ceil(REPAIR_FRACTION * total)) * 2**attempt
    ranked = sorted((s, n) for n, s in scores.items() if n not in excluded)
    return [n for _, n in ranked[:k]]


def quantize_with_repair(
    float_path: Path,
    out_path: Path,
    calibration: CalibrationSet,
    gate: Callable[[Path], tuple],
    *,
    keep_float: tuple[str, ...] = (),
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> tuple[dict, object, object]:
    """Quantize, gate, repair. ``gate(path) -> (ParityReport, GateResult)`` or (None, None)
    when verification is off (then one attempt, nothing repaired). Returns the precision
    record for the manifest and the last (report, gate result); the caller raises."""
    float_model = onnx.load(str(float_path), load_external_data=False)
    nodes = quantizable_nodes(float_model)
    unknown = sorted(set(keep_float) - {n.name for n in float_model.graph.node})
    if unknown:
        raise ExportError(f"int8 float nodes: expected node names of the graph, got {unknown}")
    excluded = list(keep_float)
    cache = out_path.with_name(f".{out_path.stem}.calibration.json")
    attempts: list[dict] = []
    report = result = None
    try:
        for attempt in range(max_attempts):
            quantize_qdq(float_path, out_path, calibration, excluded, cache)
            report, result = gate(out_path)
            record = {"attempt": attempt + 1, "float_nodes": len(excluded)}
            if result is not None:
                record["passed"] = result.passed
                record["failures"] = [f"{f.output} {f.metric} {f.got:.5f}" for f in result.failures]
            attempts.append(record)
            if result is None or result.passed or attempt + 1 == max_attempts:
                break
            n = min(SENSITIVITY_SAMPLES, len(calibration.pixels))
            scores = node_sensitivity(float_path, out_path, calibration.pixels[:n])
            added = next_exclusions(scores, excluded, len(nodes), attempt)
            if not added:
                break
            record["kept_float_next"] = {a: round(scores[a], 2) for a in added}
            log.warning(
                "INT8 gate failed (attempt %d); keeping %d most sensitive nodes in float: %s",
                attempt + 1,
                len(added),
                ", ".join(added),
            )
            excluded += added
    finally:
        cache.unlink(missing_ok=True)
    return precision_record(float_model, out_path, excluded, calibration, attempts), report, result


def precision_record(float_model, out_path: Path, excluded, calibration, attempts) -> dict:
    kinds = {n.name: n.op_type for n in float_model.graph.node}
    qdq = onnx.load(str(out_path), load_external_data=False)
    ops = Counter(n.op_type for n in qdq.graph.node)
    quantized = len(quantizable_nodes(float_model)) - len(excluded)
    return {
        "mode": "int8",
        "io_dtype": "float32",
        "quantizer": "onnxruntime.quantization.quantize_static (QDQ)",
        "weights": "int8, symmetric, per output channel",
        "activations": "int8, symmetric, per tensor, MinMax calibration",
        "quantized_ops": list(QUANTIZED_OPS),
        "quantized_nodes": quantized,
        "qdq_nodes": {k: ops[k] for k in ("QuantizeLinear", "DequantizeLinear")},
        "float_ops": sorted({k for k in kinds.values()} - set(QUANTIZED_OPS)),
        "fp32_nodes": list(excluded),  # quantizable nodes kept in float (by the repair loop)
        "kept_fp32": dict(sorted(Counter(kinds[n] for n in excluded).items())),
        "calibration": calibration.source,
        "attempts": attempts,
    }


def gate_inputs(parity):
    """The rows the int8 gate compares: the real images only, when there are any.

    Static quantization is calibrated on images; the parity set's random-normal rows lie
    outside every calibrated range (clipped by design), so they would measure the noise
    input, not the artifact (measured on the bundled model: cosine 0.35 on such a row)."""
    from vit_deploy.export.verify import ParityInputs

    n = parity.inputs.real or len(parity.inputs.pixels)
    inputs = ParityInputs(parity.inputs.pixels[:n], real=min(n, parity.inputs.real))
    return inputs, {k: v[:n] for k, v in parity.outputs.items()}


def quantize_artifact(model_path: Path, config, options, parity, threads=None):
    """The pipeline's int8 stage: the fp32 graph at ``model_path`` is replaced by its
    gated QDQ form. Returns (precision record, report, gate result); raises ParityError
    when the last attempt still fails the int8 gate (nothing is published)."""
    from vit_deploy.export.onnx.calibration import calibration_set
    from vit_deploy.export.verify import verify_artifact
    from vit_deploy.runtime.ort_backend import OrtBackend

    calibration = calibration_set(
        config,
        options.calibration,
        options.calibration_size,
        gate_rows=parity.inputs.real if options.verify else 0,
    )

    def gate(path: Path):
        if not options.verify:
            return None, None
        backend = OrtBackend.from_onnx(path, config, threads=threads)
        inputs, reference = gate_inputs(parity)
        return verify_artifact(
            backend,
            parity.reference_model,
            "int8",
            inputs=inputs,
            reference=reference,
            batch=options.batch.opt,
            raise_on_failure=False,
        )

    float_path = model_path.with_name(f".{model_path.stem}.float.onnx")
    os.replace(model_path, float_path)
    try:
        record, report, result = quantize_with_repair(
            float_path,
            model_path,
            calibration,
            gate,
            keep_float=tuple(options.int8_float_nodes),
            max_attempts=options.int8_attempts,
        )
    finally:
        float_path.unlink(missing_ok=True)
    if result is not None:
        record["gate_inputs"] = gate_inputs(parity)[0].to_dict()
        result.raise_for_failure(report)
    return record, report, result
