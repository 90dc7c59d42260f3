"""Fusion report: did each encoder block's attention become one fused kernel?

Read from the engine inspector's layers (``trt_inspect``) and the ONNX names of each
block's attention-core nodes (``trt_graph.attention_core_nodes``: Q·Kᵀ, softmax, P·V).

The status comes from structure, i.e. what the inspector documents: every engine layer
lists the ONNX nodes it implements (``"Metadata": "[ONNX Layer: ...]"``). A block is
``fused`` when one layer implements all of its attention-core nodes, ``not_fused`` when
they are spread over several layers, ``unknown`` when no layer names them or they sit in
an opaque Myelin region.

Kernel names (``TacticName``, TensorRT-generated layer names such as ``_gemm_mha_v2_*``)
are not a documented API: ``is_fused_attention_layer`` reads them as a hint only, recorded
beside the status as unverified (``KERNEL_HINT_STATUS``), never deciding it, until a real
engine's JSON (``scripts/gpu_check.sh`` saves one as ``trt_inspector.json``) confirms the
markers.
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

KERNEL_HINT_STATUS = "unverified: no real engine's inspector JSON has been checked yet"
FUSION_HEURISTIC = (
    "a block counts as fused when one engine layer implements all of its attention-core "
    "ONNX nodes (Q·Kᵀ matmul, softmax, P·V matmul; read from the inspector's "
    "'[ONNX Layer: ...]' metadata); kernel names containing one of "
    + ", ".join(FUSED_ATTENTION_MARKERS)
    + " or TensorRT-generated names such as _gemm_mha_v2_* are recorded as a hint only ("
    + KERNEL_HINT_STATUS
    + ")"
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
    status: str  # fused / not_fused / unknown (from structure)
    layers: tuple[str, ...] = ()
    reason: str = ""
    kernel_hint: bool = False  # a kernel name looks like fused MHA (unverified heuristic)


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
                {
                    "block": b.block,
                    "status": b.status,
                    "layers": list(b.layers),
                    "reason": b.reason,
                    "kernel_hint": b.kernel_hint,
                }
                for b in self.blocks
            ],
            "fused_layers": list(self.fused_layers),
            "reason": self.reason,
            "heuristic": self.heuristic,
            "kernel_hints": KERNEL_HINT_STATUS,
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

    def core_refs(layer: LayerInfo) -> dict[int, set[str]]:
        """block -> the attention-core ONNX nodes of that block this layer implements."""
        found: dict[int, set[str]] = {}
        for ref in layer.onnx_refs:
            if core_nodes is not None:
                b = core_nodes.get(ref)
            else:
                b = block_index(ref)
                if b is not None and not is_attention_core(NodeInfo(ref, "", ref)):
                    b = None
            if b is not None:
                found.setdefault(b, set()).add(ref)
        return found

    per_block: dict[int, list[tuple[LayerInfo, set[str]]]] = {b: [] for b in range(depth)}
    hinted = []
    for layer in info.layers:
        if is_fused_attention_layer(layer):
            hinted.append(layer.name)
        for b, refs in core_refs(layer).items():
            per_block.setdefault(b, []).append((layer, refs))
    wanted: dict[int, set[str]] = {}
    if core_nodes is not None:
        for name, b in core_nodes.items():
            wanted.setdefault(b, set()).add(name)

    blocks = []
    for b in sorted(per_block):
        entries = per_block[b]
        names = tuple(layer.name for layer, _ in entries)
        hint = any(is_fused_attention_layer(layer) for layer, _ in entries)
        core = wanted.get(b) or set().union(*(refs for _, refs in entries))
        if not entries:
            blocks.append(BlockFusion(b, "unknown", (), "no layer names this block's attention"))
        elif any(layer.layer_type.lower() == "myelin" for layer, _ in entries):
            reason = "inside an opaque Myelin region; kernels not listed"
            blocks.append(BlockFusion(b, "unknown", names, reason, hint))
        elif len(core) < 2:
            reason = f"only {sorted(core)} of the attention core is named; cannot tell"
            blocks.append(BlockFusion(b, "unknown", names, reason, hint))
        elif any(refs >= core for _, refs in entries):
            one = next(layer.name for layer, refs in entries if refs >= core)
            blocks.append(BlockFusion(b, "fused", (one,), "", hint))
        else:
            reason = f"attention runs as {len(entries)} separate layers"
            blocks.append(BlockFusion(b, "not_fused", names, reason, hint))

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
    else:
        status, reason = "unknown", "no attention layer could be attributed to a block"
        if hinted:
            reason += (
                f"; {len(hinted)} layers have fused-MHA-like kernel names ({KERNEL_HINT_STATUS})"
            )
    fused_layers = tuple(n for blk in blocks if blk.status == "fused" for n in blk.layers)
    return FusionReport(depth, status, tuple(blocks), fused_layers, reason)


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
    "KERNEL_HINT_STATUS",
    "FUSED_ATTENTION_MARKERS",
    "FUSION_HEURISTIC",
    "FusionReport",
    "format_fusion_report",
    "fusion_report",
    "is_fused_attention_layer",
]
