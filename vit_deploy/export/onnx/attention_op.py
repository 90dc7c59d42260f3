"""ONNX form of our fused attention op, ``torch.ops.vit_deploy.attention``.

The op takes q, k, v as (B, N, H, d) and returns (B, N, H, d). In ONNX it becomes the
plain pattern TensorRT's MHA fusion matches and ONNX Runtime runs everywhere:

    Transpose -> Mul(q, 1/sqrt(d)) -> MatMul(q, k^T) -> Softmax -> MatMul(., v) -> Transpose

with the scale on Q before the first MatMul, as in ``layers.math_attention``.
"""

from __future__ import annotations

import math


def attention_to_onnx(q, k, v):
    """Traced by torch.onnx's exporter (onnxscript values in, onnxscript values out)."""
    from onnxscript import opset18 as op

    qh = op.Transpose(q, perm=[0, 2, 1, 3])  # (B, H, N, d)
    kt = op.Transpose(k, perm=[0, 2, 3, 1])  # (B, H, d, N)
    vh = op.Transpose(v, perm=[0, 2, 1, 3])  # (B, H, N, d)
    head_dim = _static_last_dim(q)
    if head_dim is not None:
        scale = op.CastLike(1.0 / math.sqrt(head_dim), q)
    else:  # head dim unknown at trace time: 1 / sqrt(d) from the shape
        d = op.CastLike(op.Shape(q, start=3, end=4), q)
        scale = op.Reciprocal(op.Sqrt(d))
    probs = op.Softmax(op.MatMul(op.Mul(qh, scale), kt), axis=-1)
    return op.Transpose(op.MatMul(probs, vh), perm=[0, 2, 1, 3])


def _static_last_dim(value) -> int | None:
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    last = shape[-1]
    return last if isinstance(last, int) else None


def fused_attention_op():
    """``torch.ops.vit_deploy.attention.default`` when the kernel package registered it."""
    import importlib

    import torch

    try:  # importing the kernel package registers the op
        importlib.import_module("vit_deploy.kernels")
    except Exception:  # noqa: BLE001  (no kernels package yet, or Triton missing)
        pass
    namespace = getattr(torch.ops, "vit_deploy", None)
    try:
        return namespace.attention.default if namespace is not None else None
    except (AttributeError, RuntimeError):
        return None


def custom_translation_table() -> dict:
    """The table for ``torch.onnx.export(custom_translation_table=...)``: empty when the
    fused op is not registered (nothing to translate)."""
    op = fused_attention_op()
    return {op: attention_to_onnx} if op is not None else {}
