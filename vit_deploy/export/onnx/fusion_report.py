"""Fusion report: how many attention, LayerNorm and GELU blocks are single fused nodes.

Counted, never assumed, in two graphs: the saved artifact, and the graph ONNX Runtime
actually runs after its own session-time optimisations (saved via
``SessionOptions.optimized_model_filepath``). A ViT of depth L has L attention
blocks, 2L + 1 LayerNorms and L GELUs; fewer fused attention nodes than L is
reported loudly.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import onnx

log = logging.getLogger(__name__)

ATTENTION_OPS = frozenset(
    {
        "Attention",  # com.microsoft, and ai.onnx from opset 23
        "MultiHeadAttention",
        "PackedAttention",
        "PackedMultiHeadAttention",
        "GroupQueryAttention",
    }
)
LAYERNORM_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "EmbedLayerNormalization",
    }
)
GELU_OPS = frozenset({"Gelu", "FastGelu", "BiasGelu", "GemmFastGelu", "QuickGelu"})


def op_counts(model: onnx.ModelProto | str | os.PathLike) -> dict[str, int]:
    """Node count per op type (main graph), from a model or a path (weights not loaded)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def fused_counts(counts: dict[str, int]) -> dict[str, int]:
    """Fused blocks by kind, plus the unfused forms they would otherwise take."""
    return {
        "attention": sum(counts.get(op, 0) for op in ATTENTION_OPS),
        "layernorm": sum(counts.get(op, 0) for op in LAYERNORM_OPS),
        "gelu": sum(counts.get(op, 0) for op in GELU_OPS),
        # unfused forms: one Softmax per MatMul -> Softmax -> MatMul attention core,
        # one Erf per exact-erf GELU written out as Div/Erf/Add/Mul/Mul
        "attention_unfused": counts.get("Softmax", 0),
        "gelu_erf_form": counts.get("Erf", 0),
    }


def expected_counts(depth: int) -> dict[str, int]:
    return {"attention": depth, "layernorm": 2 * depth + 1, "gelu": depth}


def fusion_report(
    artifact_counts: dict[str, int],
    session_counts: dict[str, int] | None,
    depth: int,
    optimization: dict | None = None,
) -> dict:
    """The report stored in the manifest, with the loud warnings it raised.

    ``optimization``: the exporter's record of which graph it kept and why. When the
    unfused graph was kept on purpose (measured no slower, an fp16/int8 artifact, or
    ``--optimize plain``), the missing fusion is a note, not a warning: a warning there
    would contradict the choice the same report explains."""
    expected = expected_counts(depth)
    graphs = {"artifact": artifact_counts}
    if session_counts is not None:
        graphs["ort_session"] = session_counts
    report: dict = {"expected": expected}
    for label, counts in graphs.items():
        report[label] = {"fused": fused_counts(counts), "op_counts": counts}
    best = max(report[label]["fused"]["attention"] for label in graphs)
    warnings, notes = [], []
    if best < depth:
        where = " or ".join(graphs)
        text = (
            f"attention fused in {best} of {depth} blocks ({where}): ONNX Runtime runs the "
            "unfused MatMul -> Softmax -> MatMul form (TensorRT fuses it at engine build)"
        )
        chosen_plain = _kept_unfused_on_purpose(optimization)
        if chosen_plain:
            notes.append(f"{text}; the unfused graph was kept on purpose: {chosen_plain}")
        else:
            warnings.append(text)
    report["warnings"] = warnings
    if notes:
        report["notes"] = notes
    for w in warnings:
        log.warning("FUSION: %s", w)
    return report


def _kept_unfused_on_purpose(optimization: dict | None) -> str | None:
    """The reason the plain graph was chosen, when it was a choice and not a failure."""
    if not optimization or optimization.get("chosen") != "plain":
        return None
    reason = str(optimization.get("reason", ""))
    if not reason or "failed" in reason:
        return None
    return reason


def summary_line(report: dict) -> str:
    """``artifact: attention 0/12, layernorm 25/25, gelu 12/12 | ort session: ...``."""
    expected = report["expected"]
    parts = []
    for label in ("artifact", "ort_session"):
        if label not in report:
            continue
        fused = report[label]["fused"]
        counts = ", ".join(
            f"{k} {fused[k]}/{expected[k]}" for k in ("attention", "layernorm", "gelu")
        )
        parts.append(f"{label.replace('_', ' ')}: {counts}")
    return " | ".join(parts)
