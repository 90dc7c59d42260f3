"""Fusion report: did each encoder block's attention become one fused MHA kernel?

Read from the engine inspector's layers (``trt_inspect``) and the ONNX names of each
block's attention-core nodes (``trt_graph.attention_core_nodes``). The rule is a
heuristic, because kernel names are not a documented TensorRT API (see
``FUSION_HEURISTIC``): a changed naming reads as "not fused" or "unknown", never as
fused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from vit_deploy.export.tensorrt.engine_info import EngineInfo, LayerInfo
from vit_deploy.export.tensorrt.graph import NodeInfo, block_index, is_attention_core

# Heuristics, from what TensorRT reports (kernel names are not a documented API):
# a fused attention kernel shows up as a layer whose TacticName (the kernel) or
# name carries one of these markers, e.g. name "_gemm_mha_v2_myl0_17", tactic
# "_gemm_mha_v2_0x95..." (Myelin's fused MHA), "fmha" kernels, flash-attention
# kernels, or an IAttention layer. Unfused attention is two "gemm" layers and a
# softmax for the same ONNX nodes.
FUSED_ATTENTION_MARKERS = ("mha", "fmha", "flash", "attention")
_NAME_MARKER_RE = re.compile(r"(^|[^a-z0-9])(_?gemm_mha|fmha|mha_v\d|flash)", re.IGNORECASE)

FUSION_HEURISTIC = (
    "a block counts as fused when a layer implementing its attention matmuls/softmax "
    "(matched through the '[ONNX Layer: ...]' metadata) has a kernel (TacticName) or "
    "layer type containing one of " + ", ".join(FUSED_ATTENTION_MARKERS) + " or a "
    "TensorRT-generated name such as _gemm_mha_v2_*; kernel names are not a documented "
    "TensorRT API, so a changed naming reads as 'not fused' or 'unknown', never as fused"
)


def is_fused_attention_layer(layer: LayerInfo) -> bool:
    tactic = layer.tactic.lower()
    layer_type = layer.layer_type.lower()
    if any(m in tactic for m in FUSED_ATTENTION_MARKERS):
        return True
    if any(m in layer_type for m in FUSED_ATTENTION_MARKERS):
        return True
    # the layer name can hold user ONNX names; only TensorRT-style prefixes count
    return bool(_NAME_MARKER_RE.search(layer.name.split("[")[0]))


@dataclass(frozen=True)
class BlockFusion:
    block: int
    status: str  # fused / not_fused / unknown
    layers: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class FusionReport:
    depth: int
    status: str  # fused (every block) / partial / not_fused / unknown
    blocks: tuple[BlockFusion, ...] = ()
    fused_layers: tuple[str, ...] = ()
    reason: str = ""
    heuristic: str = FUSION_HEURISTIC

    @property
    def n_fused(self) -> int:
        return sum(b.status == "fused" for b in self.blocks)

    @property
    def all_fused(self) -> bool:
        return self.status == "fused"

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "depth": self.depth,
            "fused_blocks": self.n_fused,
            "blocks": [
                {"block": b.block, "status": b.status, "layers": list(b.layers), "reason": b.reason}
                for b in self.blocks
            ],
            "fused_layers": list(self.fused_layers),
            "reason": self.reason,
            "heuristic": self.heuristic,
        }


def fusion_report(
    info: EngineInfo, depth: int, core_nodes: Mapping[str, int] | None = None
) -> FusionReport:
    """Per encoder block, whether its attention became one fused kernel.

    ``core_nodes`` maps the ONNX names of each block's attention-core nodes
    (Q·Kᵀ, softmax, P·V) to their block (``attention_core_nodes``); without it,
    the block is read from the node names (``/blocks.3/attn/MatMul``), which works
    for the TorchScript exporter's names only.
    """
    if not info.detailed:
        return FusionReport(
            depth,
            "unknown",
            tuple(BlockFusion(b, "unknown") for b in range(depth)),
            reason="the engine lists layer names only; build with "
            "ProfilingVerbosity.DETAILED to see kernels",
        )

    def blocks_of(layer: LayerInfo) -> set[int]:
        found = set()
        for ref in layer.onnx_refs:
            if core_nodes is not None:
                if ref in core_nodes:
                    found.add(core_nodes[ref])
            else:
                node = NodeInfo(ref, "", ref)
                b = block_index(ref)
                if b is not None and is_attention_core(node):
                    found.add(b)
        return found

    per_block: dict[int, list[LayerInfo]] = {b: [] for b in range(depth)}
    fused_names = []
    for layer in info.layers:
        fused = is_fused_attention_layer(layer)
        if fused:
            fused_names.append(layer.name)
        for b in blocks_of(layer):
            per_block.setdefault(b, []).append(layer)

    blocks = []
    for b in sorted(per_block):
        layers = per_block[b]
        names = tuple(layer.name for layer in layers)
        if any(is_fused_attention_layer(layer) for layer in layers):
            blocks.append(BlockFusion(b, "fused", names))
        elif not layers:
            blocks.append(BlockFusion(b, "unknown", (), "no layer names this block's attention"))
        elif any(layer.layer_type.lower() == "myelin" for layer in layers):
            blocks.append(
                BlockFusion(
                    b, "unknown", names, "inside an opaque Myelin region; kernels not listed"
                )
            )
        else:
            blocks.append(BlockFusion(b, "not_fused", names, "attention runs as separate kernels"))

    n_fused = sum(x.status == "fused" for x in blocks)
    n_not = sum(x.status == "not_fused" for x in blocks)
    if blocks and n_fused == len(blocks):
        status, reason = "fused", ""
    elif n_fused and (n_fused + n_not) == len(blocks):
        status, reason = "partial", f"{n_not} of {len(blocks)} blocks not fused"
    elif n_not and not n_fused:
        status, reason = "not_fused", "no block's attention became a fused kernel"
    elif n_fused:
        status, reason = "partial", "some blocks could not be attributed"
    elif fused_names:
        # fused kernels exist but none maps onto a block (names could not be attributed)
        status = "fused" if len(fused_names) >= depth else "partial"
        reason = (
            f"{len(fused_names)} fused attention kernels for {depth} blocks (counted, not mapped)"
        )
    else:
        status, reason = "unknown", "no attention layer could be attributed to a block"
    return FusionReport(depth, status, tuple(blocks), tuple(fused_names), reason)


def format_fusion_report(report: FusionReport) -> str:
    """A short table, plus a loud warning when attention did not fuse."""
    lines = [f"attention fusion: {report.status} ({report.n_fused}/{report.depth} blocks fused)"]
    for b in report.blocks:
        kernel = next((n for n in b.layers), "")
        detail = b.reason or (kernel[:70] if kernel else "")
        lines.append(f"  block {b.block:>2}  {b.status:<9}  {detail}")
    if report.status != "fused":
        lines.append(
            "WARNING: attention is NOT fused into one MHA kernel in every block "
            f"({report.reason or report.status}). The engine is correct but slower than it "
            "could be. Common causes: fp32 islands (Softmax kept in fp32) split the "
            "MatMul-Softmax-MatMul pattern, or the scale is not applied to Q before Q·Kᵀ."
        )
    return "\n".join(lines)


__all__ = [
    "BlockFusion",
    "FUSED_ATTENTION_MARKERS",
    "FUSION_HEURISTIC",
    "FusionReport",
    "format_fusion_report",
    "fusion_report",
    "is_fused_attention_layer",
]
