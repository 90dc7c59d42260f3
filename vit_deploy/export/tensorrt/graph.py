"""Which encoder block each ONNX node belongs to, and which nodes are attention.

Read from the exporter's metadata (torch's dynamo exporter records the module path in
``pkg.torch.onnx.name_scopes``), from the node names (the TorchScript exporter's
``/blocks.1/attn/MatMul``), or, when neither says, from the graph's structure
(``structural_scopes``). Used to name the nodes an fp32 keep list holds
(``trt_precision.resolve_fp32_nodes``) and to map engine layers back to blocks in the
fusion report (``attention_core_nodes``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeInfo:
    """One ONNX node: its name, op type and module scope ("blocks.3/blocks.3.attn/...")."""

    name: str
    op_type: str
    scope: str = ""


_BLOCK_RE = re.compile(r"(?:^|[/.])blocks[._](\d+)(?=$|[/._])")


def node_scope(name: str, metadata: Mapping[str, str] | None = None) -> str:
    """The module path a node came from.

    torch's dynamo exporter names nodes ``node_matmul_2`` and records the module
    path in the ``pkg.torch.onnx.name_scopes`` metadata; the TorchScript exporter
    puts it in the name (``/blocks.1/attn/MatMul``). Both are handled.
    """
    scopes = (metadata or {}).get("pkg.torch.onnx.name_scopes")
    if scopes:
        items = re.findall(r"'([^']*)'", scopes)
        joined = "/".join(s for s in items if s)
        if joined:
            return joined
    return name


def block_index(scope: str) -> int | None:
    """The encoder block a scope belongs to (``blocks.3`` -> 3), or None."""
    m = _BLOCK_RE.search(scope)
    return int(m.group(1)) if m else None


def _scope_tokens(scope: str) -> set[str]:
    return {t for t in re.split(r"[/.]", scope.lower()) if t}


def is_attention_core(node: NodeInfo) -> bool:
    """A node of the attention core (Q·Kᵀ, softmax, P·V), not the qkv/out projections."""
    tokens = _scope_tokens(node.scope)
    return "attn" in tokens and not tokens & {"qkv", "proj"}


def is_attention_matmul(node: NodeInfo) -> bool:
    return node.op_type == "MatMul" and is_attention_core(node)


def attention_core_nodes(nodes: Iterable[NodeInfo]) -> dict[str, int]:
    """ONNX node name -> block index, for the attention-core nodes (used by the fusion report)."""
    out = {}
    for node in nodes:
        block = block_index(node.scope)
        if block is not None and is_attention_core(node) and node.op_type in ("MatMul", "Softmax"):
            out[node.name] = block
    return out


def onnx_node_infos(model, depth: int | None = None) -> list[NodeInfo]:
    """NodeInfo for every node of an ``onnx.ModelProto`` (top-level graph).

    The scope comes from the exporter's metadata or the node name; when neither says
    which block a node is in (the export strips node metadata, and dynamo names are
    ``node_matmul_2``), and ``depth`` is given, it is read from the graph's structure
    (``structural_scopes``).
    """
    infos = []
    for node in model.graph.node:
        metadata = {p.key: p.value for p in node.metadata_props}
        infos.append(NodeInfo(node.name, node.op_type, node_scope(node.name, metadata)))
    if depth is not None and not any(block_index(n.scope) is not None for n in infos):
        infos = structural_scopes(model, depth) or infos
    return infos


def structural_scopes(model, depth: int) -> list[NodeInfo] | None:
    """Block scopes read from a ViT graph's structure, or None if it does not fit.

    In topological order a pre-norm ViT has 2 LayerNormalization nodes per block
    (norm1, norm2) and then the final one: block ``b`` runs from its norm1 (the
    2b-th LayerNorm) to the next block's norm1; nodes before the first LayerNorm are
    the stem, nodes from the final LayerNorm on are the head (block None). Inside a
    block, a MatMul whose two inputs are both activations (neither a weight nor
    derived from weights only) is one of the attention core's two matmuls.
    """
    nodes = list(model.graph.node)
    ln_positions = [i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"]
    if len(ln_positions) < 2 * depth:
        return None
    constant = {init.name for init in model.graph.initializer}
    for node in nodes:  # outputs computed from constants only are constants too
        if node.op_type == "Constant" or (
            node.input and all(i in constant for i in node.input if i)
        ):
            constant.update(node.output)
    starts = [ln_positions[2 * b] for b in range(depth)]
    end = ln_positions[2 * depth] if len(ln_positions) > 2 * depth else len(nodes)
    infos = []
    for i, node in enumerate(nodes):
        block = None
        if starts[0] <= i < end:
            block = max(b for b in range(depth) if starts[b] <= i)
        if block is None:
            scope = ""
        elif node.op_type == "MatMul" and not any(x in constant for x in node.input[:2]):
            scope = f"blocks.{block}/attn/{node.name}"
        elif node.op_type == "Softmax":
            scope = f"blocks.{block}/attn/{node.name}"
        else:
            scope = f"blocks.{block}/{node.name}"
        infos.append(NodeInfo(node.name, node.op_type, scope))
    return infos


__all__ = [
    "NodeInfo",
    "attention_core_nodes",
    "block_index",
    "is_attention_core",
    "is_attention_matmul",
    "node_scope",
    "onnx_node_infos",
    "structural_scopes",
]
