"""FP16 weights and compute, fp32 inputs and outputs, sensitive ops kept in fp32.

Uses onnxconverter-common's converter with ``keep_io_types=True`` (callers still feed
float32 pixels and get float32 outputs) and an op block list: the ops that overflow
or lose too much precision in fp16 (LayerNormalization's variance, Softmax's exp,
reductions) stay fp32 with Casts around them. What was kept is returned for the
manifest: op types and node counts.
"""

from __future__ import annotations

import warnings
from collections import Counter

import onnx

from vit_deploy.errors import ExportError
from vit_deploy.export.options import DEFAULT_FP32_OPS


def convert_to_fp16(
    model: onnx.ModelProto,
    fp32_ops: tuple[str, ...] = DEFAULT_FP32_OPS,
    fp32_nodes: tuple[str, ...] = (),
) -> tuple[onnx.ModelProto, dict]:
    """(converted model, precision report). ``model`` is converted in place.
    ``fp32_nodes``: node names kept in fp32 as well (e.g. one block's MLP)."""
    names = {n.name for n in model.graph.node}
    unknown = sorted(set(fp32_nodes) - names)
    if unknown:
        raise ExportError(f"fp32_nodes: expected node names of the graph, got unknown {unknown}")
    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = float16.convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=list(fp32_ops),
                node_block_list=list(fp32_nodes) or None,
            )
        except Exception as exc:  # noqa: BLE001  (the converter raises plain exceptions)
            raise ExportError(f"fp16 conversion failed: {type(exc).__name__}: {exc}") from exc
    clamped = sum("truncated" in str(w.message) for w in caught)
    blocked_nodes = set(fp32_nodes)
    kept = Counter(
        n.op_type
        for n in converted.graph.node
        if n.op_type in set(fp32_ops) or n.name in blocked_nodes
    )
    casts = sum(n.op_type == "Cast" for n in converted.graph.node)
    report = {
        "mode": "fp16",
        "io_dtype": "float32",
        "op_block_list": list(fp32_ops),
        "node_block_list": len(fp32_nodes),  # how many nodes were kept by name
        "fp32_nodes": list(fp32_nodes),
        "kept_fp32": dict(sorted(kept.items())),
        "cast_nodes": casts,
        "clamped_weights": clamped,  # values beyond fp16's range clamped by the converter
    }
    return converted, report


def fp32_report() -> dict:
    return {"mode": "fp32", "io_dtype": "float32", "op_block_list": [], "kept_fp32": {}}
