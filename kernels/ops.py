"""The public ``attention(q, k, v)``: input checks and the ``vit_deploy::attention`` op.

The kernel is registered as an opaque custom op, so ``torch.export`` and
``torch.compile`` see one node, ``torch.ops.vit_deploy.attention.default``, and
never trace into Triton. Its backward is the math formula in fp32 (correct,
O(N^2) memory): the kernel is for inference, but gradients are never wrong.
"""

from __future__ import annotations

import math

import torch
from vit_deploy.kernels.flash_attention import INTERPRETER, flash_attention_forward

from vit_deploy.errors import KernelError, KernelUnavailableError

SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Below 8.0 Triton lowers tl.dot to FMA (no tensor cores): it runs, slowly.
# bf16 arithmetic needs Ampere.
MIN_CAPABILITY = {torch.float16: (7, 0), torch.float32: (7, 0), torch.bfloat16: (8, 0)}
MAX_BATCH_X_HEADS = 65535  # grid axis 1 limit on CUDA


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shapes and dtypes; raises KernelError saying what is supported."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise KernelError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise KernelError(
                f"attention: expected 4-D (batch, seq, heads, head_dim) tensors, "
                f"got {name} with shape {tuple(t.shape)}"
            )
    if not (q.shape == k.shape == v.shape):
        raise KernelError(
            f"attention: q, k and v must have the same shape (self-attention), "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise KernelError(
            f"attention: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.dtype not in SUPPORTED_DTYPES:
        raise KernelError(
            f"attention: dtype must be one of {[str(d) for d in SUPPORTED_DTYPES]}, got {q.dtype}"
        )
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise KernelError(
            f"attention: head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}; "
            f"use attention='sdpa' or 'math' for other head sizes"
        )
    if not (q.device == k.device == v.device):
        raise KernelError(
            f"attention: q, k and v must be on one device, got {q.device}, {k.device}, {v.device}"
        )


def check_device_support(
    device_type: str,
    capability: tuple[int, int] | None,
    dtype: torch.dtype,
    interpreter: bool,
) -> None:
    """Can the kernel run on this device for this dtype? A pure function, so it is testable
    without the hardware. ``capability`` is the CUDA compute capability (None off CUDA)."""
    if interpreter:
        return  # the interpreter runs anything numpy can hold, on the CPU
    if device_type != "cuda":
        raise KernelUnavailableError(
            f"attention: the Triton kernel needs a CUDA device, got a {device_type} tensor. "
            f"To run it on the CPU (slowly, for tests) set TRITON_INTERPRET=1 before triton is "
            f"first imported; or use attention='sdpa' or 'math'"
        )
    if capability is None:
        return  # ROCm: torch.cuda reports no NVIDIA compute capability
    needed = MIN_CAPABILITY[dtype]
    if tuple(capability) < needed:
        raise KernelUnavailableError(
            f"attention: {dtype} needs compute capability >= {needed[0]}.{needed[1]}, "
            f"this GPU has {capability[0]}.{capability[1]}; "
            + ("use float16 instead" if dtype == torch.bfloat16 else "use attention='sdpa'")
        )


def _device_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or torch.version.hip is not None:
        return None
    return torch.cuda.get_device_capability(device)


@torch.library.custom_op("vit_deploy::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    check_inputs(q, k, v)  # again: callers of torch.ops.vit_deploy.attention skip attention()
    check_device_support(q.device.type, _device_capability(q.device), q.dtype, INTERPRETER)
    # A launch limit, checked here on concrete shapes only: under export with a dynamic
    # batch, a comparison in check_inputs would become a guard that caps the batch dim.
    if q.shape[0] * q.shape[2] > MAX_BATCH_X_HEADS:
        raise KernelError(
            f"attention: batch * heads must be <= {MAX_BATCH_X_HEADS}, "
            f"got {q.shape[0]} * {q.shape[2]}; split the batch"
        )
    # The kernel reads any layout through strides but assumes a unit-stride head dim
    # (vectorized loads); only an exotic layout pays for a copy.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return flash_attention_forward(q, k, v)


@_attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    check_inputs(q, k, v)
    return q.new_empty(q.shape)  # contiguous (B, N, H, d), like the kernel's output


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: torch.Tensor):
    """softmax(s Q Kᵀ) V differentiated by hand, in fp32, on (B, H, N, d) views."""
    q, k, v = ctx.saved_tensors
    scale = 1.0 / math.sqrt(q.shape[-1])
    q32, k32, v32, do = (t.transpose(1, 2).float() for t in (q, k, v, grad_out))
    probs = torch.softmax((q32 * scale) @ k32.transpose(-2, -1), dim=-1)
    dv = probs.transpose(-2, -1) @ do
    dprobs = do @ v32.transpose(-2, -1)
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True))
    dq = (dscores @ k32) * scale
    dk = dscores.transpose(-2, -1) @ (q32 * scale)
    return tuple(g.transpose(1, 2).to(t.dtype) for g, t in ((dq, q), (dk, k), (dv, v)))


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √d) V with the fused Triton kernel.

    q, k, v: (batch, seq, heads, head_dim), any strides (e.g. ``qkv.unbind(2)`` views
    of a (B, N, 3, H, d) tensor); fp16, bf16 or fp32; head_dim in SUPPORTED_HEAD_DIMS.
    Returns a contiguous (batch, seq, heads, head_dim) tensor in the input dtype.
    Accumulates in fp32. The backward is the unfused math formula.
    """
    check_inputs(q, k, v)
    return torch.ops.vit_deploy.attention(q, k, v)
