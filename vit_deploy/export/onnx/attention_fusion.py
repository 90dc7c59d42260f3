"""Fusion pass: our exported attention block -> one ``com.microsoft.Attention`` node.

ONNX Runtime's transformers optimizer matches BERT-style attention (separate Q, K and
V projections) and finds nothing in a ViT export, whose packed ``qkv`` projection is
split by index. This pass matches that form directly:

    X -> MatMul(W_qkv) -> Add(b_qkv) -> Reshape(B, N, 3, H, d)
      -> q, k, v as (B, H, N, d): Transpose(2, 0, 3, 1, 4) then split on axis 0 (the math
         path), or split on axis 2 then Transpose(0, 2, 1, 3) each (the fused op's form)
    Mul(q, s) -> MatMul(., Kᵀ) -> Softmax -> MatMul(., v)
      -> Transpose(0, 2, 1, 3) -> Reshape(B, N, C)

and replaces it by ``Attention(X, W_qkv, b_qkv)`` with ``num_heads=H, scale=s`` (ONNX
Runtime only: the plain graph stays the TensorRT source). It reports how many blocks
it fused; the caller checks that against the model depth, and the parity gate
checks that the result still computes the same thing.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)
MS_DOMAIN = "com.microsoft"


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def node(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def sole_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _part(g: _Graph, name: str, axis: int) -> tuple[str, int] | None:
    """(packed tensor, index) when ``name`` is part ``index`` along ``axis`` of a packed
    tensor: Squeeze of a one-wide Slice or of a Split output, or Gather."""
    squeeze = g.node(name, "Squeeze")
    if squeeze is not None:
        axes = g.const(squeeze.input[1]) if len(squeeze.input) > 1 else _attr(squeeze, "axes")
        if axes is None or list(np.ravel(axes)) != [axis]:
            return None
        sliced = g.node(squeeze.input[0], "Slice")
        if sliced is not None:
            starts, ends = g.const(sliced.input[1]), g.const(sliced.input[2])
            axes = g.const(sliced.input[3]) if len(sliced.input) > 3 else np.array([0])
            if starts is None or ends is None or list(np.ravel(axes)) != [axis]:
                return None
            start, end = int(np.ravel(starts)[0]), int(np.ravel(ends)[0])
            return (sliced.input[0], start) if end == start + 1 else None
        split = g.node(squeeze.input[0], "Split")
        if split is not None and _attr(split, "axis", 0) == axis:
            return split.input[0], list(split.output).index(squeeze.input[0])
        return None
    gather = g.node(name, "Gather")
    if gather is not None and _attr(gather, "axis", 0) == axis:
        index = g.const(gather.input[1])
        if index is not None and index.size == 1:
            return gather.input[0], int(index.ravel()[0])
    return None


def _head_major(g: _Graph, name: str) -> tuple[str, int] | None:
    """(the (B, N, 3, H, d) qkv tensor, index) for a (B, H, N, d) q, k or v, split either
    after the permute to (3, B, H, N, d) (the math path) or before it, from (B, N, H, d)
    parts transposed one by one (the fused op's ONNX form)."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Transpose":
        if list(_attr(node, "perm", [])) != [0, 2, 1, 3]:
            return None
        return _part(g, node.input[0], axis=2)
    part = _part(g, name, axis=0)
    if part is None:
        return None
    permute = g.node(part[0], "Transpose")
    if permute is None or list(_attr(permute, "perm", [])) != [2, 0, 3, 1, 4]:
        return None
    return permute.input[0], part[1]


def _key_transposed(g: _Graph, node: onnx.NodeProto) -> tuple[str, int] | None:
    """Like ``_head_major`` for Kᵀ (B, H, d, N)."""
    perm = list(_attr(node, "perm", []))
    if perm == [0, 1, 3, 2]:
        return _head_major(g, node.input[0])
    if perm == [0, 2, 3, 1]:
        return _part(g, node.input[0], axis=2)
    return None


def _match(g: _Graph, softmax: onnx.NodeProto, num_heads: int):
    """The fused node's (inputs, output, scale, anchor node) for one attention block."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = g.node(softmax.input[0], "MatMul")
    context = g.sole_consumer(softmax.output[0], "MatMul")
    if scores is None or context is None or context.input[0] != softmax.output[0]:
        return None
    scaled, k_t = (g.producer.get(i) for i in scores.input)
    if scaled is None or scaled.op_type != "Mul" or k_t is None or k_t.op_type != "Transpose":
        return None
    consts = [(i, g.const(x)) for i, x in enumerate(scaled.input)]
    scalar = [(i, c) for i, c in consts if c is not None and c.size == 1]
    if len(scalar) != 1:
        return None
    scale = float(scalar[0][1].ravel()[0])
    q = scaled.input[1 - scalar[0][0]]
    parts = [_head_major(g, q), _key_transposed(g, k_t), _head_major(g, context.input[1])]
    if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
        return None
    if [p[1] for p in parts] != [0, 1, 2]:
        return None
    reshape = g.node(parts[0][0], "Reshape")
    shape = g.const(reshape.input[1]) if reshape is not None else None
    if shape is None or len(shape) != 5 or shape[2] != 3 or shape[3] != num_heads:
        return None
    add = g.node(reshape.input[0], "Add")
    if add is None:
        return None
    matmul, bias = None, None
    for i, name in enumerate(add.input):
        node = g.node(name, "MatMul")
        if node is not None and g.const(add.input[1 - i]) is not None:
            matmul, bias = node, add.input[1 - i]
    if matmul is None or g.const(matmul.input[1]) is None:
        return None
    weight = g.const(matmul.input[1])
    hidden = weight.shape[0]
    if weight.ndim != 2 or weight.shape[1] != 3 * hidden or g.const(bias).shape != (3 * hidden,):
        return None
    back = g.sole_consumer(context.output[0], "Transpose")
    if back is None or list(_attr(back, "perm", [])) != [0, 2, 1, 3]:
        return None
    merge = g.sole_consumer(back.output[0], "Reshape")
    merged = g.const(merge.input[1]) if merge is not None else None
    if merged is None or len(merged) != 3 or merged[-1] != hidden:
        return None
    return [matmul.input[0], matmul.input[1], bias], merge.output[0], scale, merge


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    keep = {o.name for o in graph.output}
    alive = []
    for node in reversed(graph.node):
        if any(o in keep for o in node.output):
            alive.append(node)
            keep.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(alive))
    used = {i for n in graph.node for i in n.input}
    kept_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)


def fuse_attention(model: onnx.ModelProto, num_heads: int) -> int:
    """Fuse every matching attention block in place; return how many were fused."""
    g = _Graph(model.graph)
    fused = 0
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        match = _match(g, softmax, num_heads)
        if match is None:
            continue
        inputs, output, scale, anchor = match
        node = helper.make_node(
            "Attention",
            inputs,
            [output],
            name=f"Attention_{fused}",
            domain=MS_DOMAIN,
            num_heads=num_heads,
            scale=scale,
        )
        anchor.output[0] = f"{output}__unfused"  # the old path now ends nowhere
        position = list(model.graph.node).index(anchor)
        model.graph.node.insert(position, node)
        fused += 1
    if fused:
        _remove_dead_nodes(model.graph)
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    log.debug("fused %d attention blocks into com.microsoft.Attention", fused)
    return fused
