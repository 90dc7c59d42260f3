"""FlashAttention-2-style forward kernel (non-causal, no dropout) and its launcher.

One program computes one block of ``BLOCK_M`` queries of one (batch, head). It
keeps its queries in registers and streams the keys and values past them in
tiles of ``BLOCK_N``, with an online softmax: a running row max ``m_i``, a
running row sum ``l_i`` and an fp32 accumulator ``acc`` rescaled whenever the max
grows. The N x N scores live only in registers, one tile at a time.

Tails: the last query block's rows past N are masked on load and store; the last
key tile's columns past N get a score of -inf. Head dims that are not a power of
two (80, 96) are padded to ``HEAD_DIM_PADDED`` with masked (zero) columns.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

# triton.jit decides at decoration time (just below) whether to interpret; ask it the
# same way, so "true" or "on" count as they do for Triton (knobs: triton >= 3.4).
if hasattr(triton, "knobs"):
    INTERPRETER = bool(triton.knobs.runtime.interpret)
else:
    INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

# The interpreter runs each program in Python, so autotuning there only burns time;
# one config with BLOCK_M != BLOCK_N keeps a transposition mix-up from hiding.
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 64}

_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) == exp2(x * log2(e)); exp2 is the fast one


@triton.jit
def _attend_tile(
    acc,
    l_i,
    m_i,
    q,
    k_ptrs,
    v_ptrs,
    start_n,
    offs_n,
    offs_d,
    N,
    stride_kn,
    stride_vn,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    MASK_KEYS: tl.constexpr,
):
    """Fold one tile of keys/values starting at ``start_n`` into the softmax state."""
    keys = start_n + offs_n
    k_tile = k_ptrs + start_n * stride_kn
    v_tile = v_ptrs + start_n * stride_vn
    # Rows past N and padded head-dim columns read as 0. (Inline, not a helper: each
    # nested jit call costs the interpreter more than the tile's arithmetic.)
    if MASK_KEYS or HEAD_DIM_PADDED != HEAD_DIM:
        kv_mask = (keys[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
        k = tl.load(k_tile, mask=kv_mask, other=0.0)
        v = tl.load(v_tile, mask=kv_mask, other=0.0)
    else:
        k = tl.load(k_tile)  # full tile, exact head dim: nothing to mask
        v = tl.load(v_tile)
    if UPCAST_DOT:
        k = k.to(tl.float32)
    # q is already scaled by 1/sqrt(d); scores go to the log2 domain for exp2.
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * _LOG2E
    if MASK_KEYS:
        qk = tl.where(keys[None, :] < N, qk, float("-inf"))
    # Every tile holds at least one real key, so m_new is finite and no row is NaN.
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)  # rescales what was summed under the old max
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    p = p.to(v.dtype)  # tensor cores take p in the input dtype
    if UPCAST_DOT:
        p = p.to(tl.float32)
        v = v.to(tl.float32)
    acc = tl.dot(p, v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    Out,
    sm_scale,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_ob,
    stride_on,
    stride_oh,
    H,
    N,
    BH_BUCKET,  # autotune key only: log2 bucket of batch * heads
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PADDED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter + bf16 only, see _upcast_dot
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(HEAD_DIM <= HEAD_DIM_PADDED)
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16)  # tl.dot's smallest tile

    start_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    # int64 base offsets: batch * stride overflows int32 for large batches at N=577.
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PADDED)  # the head dim has unit stride (the host ensures it)

    q_ptrs = (
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    )
    k_ptrs = (
        K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    )
    v_ptrs = (
        V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    )

    # Query rows past N (and padded columns) read as 0 and are never stored.
    q_mask = (offs_m[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    # Scale Q once (not every score tile): the exact product, rounded once to the input
    # dtype, as the reference's q * scale. (fp32 first also dodges the interpreter's
    # missing bf16 scalar constants.)
    q = (q.to(tl.float32) * sm_scale).to(Q.dtype.element_ty)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PADDED], dtype=tl.float32)

    # Full key tiles need no mask; only the ragged last one (N=197: 197 % 64 = 5) does.
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, start_n, offs_n, offs_d, N, stride_kn, stride_vn,
            HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, UPCAST_DOT, False,
        )  # fmt: skip
    if n_full < N:
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, n_full, offs_n, offs_d, N, stride_kn, stride_vn,
            HEAD_DIM, HEAD_DIM_PADDED, DOT_PRECISION, UPCAST_DOT, True,
        )  # fmt: skip

    # Padded query rows saw real keys with q = 0, so l_i > 0 everywhere: no 0/0.
    out = (acc / l_i[:, None]).to(Out.dtype.element_ty)
    o_ptrs = (
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    )
    tl.store(o_ptrs, out, mask=q_mask)


def autotune_configs() -> list[triton.Config]:
    """Every candidate; ``prune_configs`` drops the ones that cannot pay off for a shape."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)
        for bm in (32, 64, 128)
        for bn in (32, 64)
        for warps in (4, 8)
        for stages in (2, 3, 4)
    ]


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs that cannot pay off for this shape. The register limits come from
    compiling every config for sm_90 and reading ptxas's spill counts."""
    n = named_args["N"]
    head_dim_padded = kwargs["HEAD_DIM_PADDED"]
    fp32 = named_args["Q"].dtype == torch.float32
    longest = max(32, triton.next_power_of_2(n))

    def useful(c: triton.Config) -> bool:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if bm > longest or bn > longest:
            return False  # a block longer than the sequence is all padding
        if c.num_stages > max(2, triton.cdiv(n, bn)):
            return False  # pipelining deeper than the number of key tiles buys nothing
        if fp32:
            # IEEE fp32 dots run on CUDA cores and hold both operands in registers:
            # every config spills, the smallest tiles least. fp32 is the parity path.
            return bm <= 64 and bn == 32
        # fp32 acc (BLOCK_M x d) plus scores (BLOCK_M x BLOCK_N) per thread: past 96
        # values (e.g. BLOCK_M=128, d=128, 4 warps) ptxas spills.
        return bm * (head_dim_padded + bn) // (32 * c.num_warps) <= 96

    return [c for c in configs if useful(c)] or configs[:1]


if INTERPRETER:
    _attn_fwd_launch = _attn_fwd
else:
    _attn_fwd_launch = triton.autotune(
        configs=autotune_configs(),
        # ViT runs few sequence lengths; batch*heads (bucketed) changes the best block
        # size: at batch 1 the grid is too small to fill the GPU with BLOCK_M=128.
        key=["N", "HEAD_DIM", "BH_BUCKET"],
        prune_configs_by={"early_config_prune": prune_configs},
        cache_results=True,  # tuning takes ~seconds per shape; keep it on disk across runs
    )(_attn_fwd)


def autotuned_config() -> str | None:
    """The config the autotuner used for the latest launch (None under the interpreter)."""
    best = getattr(_attn_fwd_launch, "best_config", None)
    return str(best) if best is not None else None


def _upcast_dot(dtype: torch.dtype) -> bool:
    # Triton 3.8's interpreter multiplies bf16's raw uint16 bits in tl.dot, so there the
    # (already bf16-rounded) operands go in as fp32: the same products, exactly.
    return INTERPRETER and dtype == torch.bfloat16


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 must not silently drop to TF32, or fp32 parity with torch (1e-5) is lost.
    if dtype == torch.float32 or _upcast_dot(dtype) or torch.version.hip is not None:
        return "ieee"
    return "tf32"  # Triton's NVIDIA default; only applies to fp32 operands anyway


def flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Launch the kernel on checked (B, N, H, d) tensors whose head dim has unit stride.

    Returns a new contiguous (B, N, H, d) tensor in the input dtype.
    """
    B, N, H, d = q.shape
    out = torch.empty((B, N, H, d), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    head_dim_padded = max(16, triton.next_power_of_2(d))
    extra = dict(INTERPRETER_CONFIG) if INTERPRETER else {}  # else the autotuner picks

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]), B * H)

    _attn_fwd_launch[grid](
        q, k, v, out,
        1.0 / math.sqrt(d),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, N, (B * H).bit_length(),
        HEAD_DIM=d,
        HEAD_DIM_PADDED=head_dim_padded,
        DOT_PRECISION=_dot_precision(q.dtype),
        UPCAST_DOT=_upcast_dot(q.dtype),
        **extra,
    )  # fmt: skip
    return out
