"""The fused Triton attention kernel against the math reference.

Without a GPU the kernel runs under the Triton interpreter (conftest sets
TRITON_INTERPRET=1), one Python step per tile: slow, so the parity cases are a
covering set (every N, head dim and dtype at least once), not a full product.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vit_deploy import ViTConfig, create_model
from vit_deploy.errors import ConfigError, KernelError, KernelUnavailableError
from vit_deploy.model.layers import math_attention

# Where Triton cannot be installed (macOS, Windows) there is nothing here to run.
triton = pytest.importorskip("triton", reason="the fused kernel needs Triton (Linux)")
from vit_deploy.kernels import (  # noqa: E402
    SUPPORTED_HEAD_DIMS,
    TritonNotInstalledError,
    attention,
    check_device_support,
    flash_attention,
)

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU; none on this machine")

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (atol, rtol) against the fp32 reference on the same (rounded) inputs.
TOL = {
    F32: (1e-5, 1e-5),
    F16: (1e-2, 1e-2),
    # Loosened: bf16 keeps 8 mantissa bits; p and the output are each rounded to it
    # (one bf16 ulp at |x| in [2, 4) is 0.0156).
    BF16: (2e-2, 2e-2),
}


def make_qkv(B, N, H, d, dtype, layout="qkv", scale=1.0):
    """q, k, v as (B, N, H, d). ``qkv``: strided views of one packed (B, N, 3, H, d)
    tensor, as the model passes them; ``bhnd``: transposes of (B, H, N, d) tensors;
    ``separate``: three contiguous tensors."""
    if layout == "qkv":
        x = torch.randn(B, N, 3, H, d, device=DEVICE) * scale
        return x.to(dtype).unbind(2)
    if layout == "bhnd":
        return tuple(
            (torch.randn(B, H, N, d, device=DEVICE) * scale).to(dtype).transpose(1, 2)
            for _ in range(3)
        )
    assert layout == "separate"
    return tuple((torch.randn(B, N, H, d, device=DEVICE) * scale).to(dtype) for _ in range(3))


def reference(q, k, v):
    """math_attention in fp32 on (B, H, N, d), back to (B, N, H, d)."""
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    return math_attention(q, k, v).transpose(1, 2)


def assert_close(out, ref, dtype):
    assert not torch.isnan(out).any(), "NaN in the kernel's output"
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


# (B, N, H, d, dtype, layout): each N, head dim and dtype appears at least once; N=64
# and 65 straddle a key tile, 1 and 2 are all tail, 197/257/577 are ViT lengths, and
# 80/96 take the padded head-dim path with full and partial key tiles.
CASES = [
    (1, 1, 1, 64, F32, "qkv"),
    (2, 1, 3, 128, BF16, "qkv"),
    (1, 2, 2, 32, F16, "qkv"),
    (3, 2, 1, 96, F32, "separate"),
    (2, 50, 2, 80, F16, "qkv"),
    (1, 50, 1, 128, F32, "bhnd"),
    (1, 64, 3, 64, BF16, "qkv"),
    (2, 64, 1, 32, F32, "qkv"),
    (1, 65, 2, 96, BF16, "qkv"),
    (1, 65, 1, 80, F32, "qkv"),
    (2, 197, 2, 64, F16, "qkv"),
    (1, 197, 1, 64, F32, "bhnd"),
    (1, 197, 1, 80, BF16, "qkv"),
    (1, 257, 2, 80, F16, "qkv"),
    (1, 257, 1, 128, F32, "qkv"),
    (1, 577, 1, 64, F16, "qkv"),
    (1, 577, 1, 32, BF16, "qkv"),
    (1, 577, 1, 96, F32, "qkv"),
]


@pytest.fixture
def few_configs(monkeypatch):
    """On a GPU, autotune over two configs instead of ~30: the parity sweep compiles for
    many shapes, and a full tune per shape would take minutes. No-op off CUDA."""
    launch = flash_attention._attn_fwd_launch
    if CUDA and isinstance(launch, triton.runtime.Autotuner):
        monkeypatch.setattr(launch, "configs", [launch.configs[0], launch.configs[-1]])


@pytest.mark.parametrize(
    "B, N, H, d, dtype, layout",
    CASES,
    ids=[f"B{c[0]}-N{c[1]}-H{c[2]}-d{c[3]}-{str(c[4])[6:]}-{c[5]}" for c in CASES],
)
def test_matches_math_reference(B, N, H, d, dtype, layout, few_configs):
    q, k, v = make_qkv(B, N, H, d, dtype, layout)
    out = attention(q, k, v)
    assert out.shape == (B, N, H, d) and out.dtype == dtype and out.is_contiguous()
    assert_close(out, reference(q, k, v), dtype)


@pytest.mark.parametrize("N, d, dtype", [(65, 80, F16), (197, 96, F32)])
def test_masked_lanes_are_never_read(N, d, dtype, few_configs):
    # q, k, v are views into a buffer whose rows past N and columns past d are NaN:
    # any unmasked read of a key tail or padded head-dim column poisons the output.
    buf = torch.full((1, N + 40, 3, 2, 128), float("nan"), device=DEVICE, dtype=dtype)
    buf[:, :N, ..., :d] = torch.randn(1, N, 3, 2, d, device=DEVICE).to(dtype)
    q, k, v = buf[:, :N, ..., :d].unbind(2)
    assert_close(attention(q, k, v), reference(q, k, v), dtype)


def test_case_list_covers_every_length_head_dim_and_dtype():
    assert {c[1] for c in CASES} >= {1, 2, 50, 64, 65, 197, 257, 577}
    assert {c[3] for c in CASES} == set(SUPPORTED_HEAD_DIMS)
    assert {c[4] for c in CASES} == {F32, F16, BF16}


@pytest.mark.parametrize("dtype", [F32, F16])
def test_large_logits_stay_finite(dtype):
    # Integer q, k in [-8, 8] and d=64 (scale 1/8, a power of two): the scores are exact
    # in every dtype, so parity stays tight, and they spread over ~+-100, where exp()
    # overflows fp32 unless the running max is subtracted.
    B, N, H, d = 1, 70, 2, 64
    q, k = (torch.randint(-8, 9, (B, N, H, d), device=DEVICE).to(dtype) for _ in range(2))
    v = torch.randn(B, N, H, d, device=DEVICE).to(dtype)
    scores = reference_scores(q, k)
    assert scores.amax() - scores.amin() > 100
    out = attention(q, k, v)
    assert torch.isfinite(out).all()
    assert_close(out, reference(q, k, v), dtype)


def reference_scores(q, k):
    q, k = (t.float().transpose(1, 2) for t in (q, k))
    return (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)


def test_gradients_match_math_reference():
    q, k, v = (t.detach().requires_grad_() for t in make_qkv(2, 65, 2, 32, F32, "separate"))
    grad_out = torch.randn(2, 65, 2, 32, device=DEVICE)
    (attention(q, k, v) * grad_out).sum().backward()
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    (reference(q2, k2, v2) * grad_out).sum().backward()
    for got, want in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_vit_triton_matches_math_end_to_end():
    cfg = ViTConfig(img_size=32, patch_size=4, embed_dim=128, depth=2, num_heads=2, num_classes=10)
    ref_model = create_model(cfg, attention="math").to(DEVICE)
    model = create_model(cfg, attention="triton", seed=1).to(DEVICE)
    model.load_state_dict(ref_model.state_dict())
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        want, got = ref_model(x), model(x)
    assert not torch.isnan(got).any() and not torch.isnan(want).any()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_scale_is_one_over_sqrt_head_dim():
    # Two keys with q.k = 4 and 0: their weights are sigmoid(+-4/sqrt(d)), and so is the
    # output's first column; no scale, or 1/d, gives a different number.
    d = 64
    q = torch.zeros(1, 2, 1, d, device=DEVICE)
    q[..., 0] = 1.0
    k = torch.zeros(1, 2, 1, d, device=DEVICE)
    k[0, 0, 0, 0] = 4.0  # q.k = 4 for key 0, 0 for key 1
    v = torch.zeros(1, 2, 1, d, device=DEVICE)
    v[0, 0, 0, 0] = 1.0
    out = attention(q, k, v)
    expected = 1.0 / (1.0 + math.exp(-4.0 / math.sqrt(d)))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(
        out[0, :, 0, 0], torch.full((2,), expected, device=DEVICE), atol=1e-6, rtol=0
    )


class _TinyAttention(torch.nn.Module):
    def forward(self, qkv):
        return attention(*qkv.unbind(2))


def _op_nodes(graph_module):
    return [
        n for n in graph_module.graph.nodes if n.target is torch.ops.vit_deploy.attention.default
    ]


def test_export_sees_one_opaque_node():
    qkv = torch.randn(2, 65, 3, 2, 32, device=DEVICE)
    batch = torch.export.Dim("batch")  # a dynamic batch must not be capped by our checks
    ep = torch.export.export(_TinyAttention(), (qkv,), dynamic_shapes={"qkv": {0: batch}})
    assert len(_op_nodes(ep.graph_module)) == 1
    qkv3 = torch.randn(3, 65, 3, 2, 32, device=DEVICE)
    out = ep.module()(qkv3)
    assert out.shape == (3, 65, 2, 32) and not torch.isnan(out).any()
    assert_close(out, reference(*qkv3.unbind(2)), F32)


def test_export_of_vit_keeps_one_node_per_block():
    # Parameters require grad here: export must not trip over the autograd formula.
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    model = create_model(cfg, attention="triton").to(DEVICE)
    ep = torch.export.export(model, (torch.randn(1, 3, 32, 32, device=DEVICE),))
    assert len(_op_nodes(ep.graph_module)) == cfg.depth
    targets = {str(n.target) for n in ep.graph_module.graph.nodes}
    assert not any("softmax" in t for t in targets), "the attention math leaked into the graph"


def _pruned(n, head_dim, dtype=F16):
    named = {"N": n, "Q": torch.empty(0, dtype=dtype)}
    head_dim_padded = 1 << (head_dim - 1).bit_length()
    kept = flash_attention.prune_configs(
        flash_attention.autotune_configs(), named, HEAD_DIM_PADDED=head_dim_padded
    )
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]


def test_autotune_pruning():
    all_configs = _pruned(4096, 32)
    assert len(all_configs) == 3 * 2 * 2 * 3  # nothing to prune at d=32 on a long sequence
    # N=1: nothing longer than one 32-block, no deep pipelines over a single key tile.
    assert {(bm, bn) for bm, bn, _, _ in _pruned(1, 64)} == {(32, 32)}
    assert {s for *_, s in _pruned(1, 64)} == {2}
    # ViT-B: every block size stays in play, only the register-spilling one goes.
    vit_b = _pruned(197, 64)
    assert {bm for bm, *_ in vit_b} == {32, 64, 128}
    assert (128, 64, 4, 3) not in vit_b and (128, 64, 8, 3) in vit_b
    # d=80/96/128 (padded to 128): 128-row blocks need 8 warps.
    assert all(w == 8 for bm, _, w, _ in _pruned(257, 80) if bm == 128)
    # fp32 runs on CUDA cores: only the small tiles.
    assert {(bm, bn) for bm, bn, _, _ in _pruned(197, 64, F32)} == {(32, 32), (64, 32)}


# -- bad inputs ------------------------------------------------------------------------


def _t(*shape, dtype=F32):
    return torch.zeros(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize(
    "q, k, v, match",
    [
        (_t(1, 8, 2, 48), _t(1, 8, 2, 48), _t(1, 8, 2, 48), r"head_dim must be one of \(32, 64"),
        (_t(1, 8, 2, 256), _t(1, 8, 2, 256), _t(1, 8, 2, 256), "got 256"),
        (_t(1, 8, 2, 64), _t(1, 9, 2, 64), _t(1, 8, 2, 64), "same shape"),
        (_t(1, 8, 2, 64), _t(1, 8, 2, 64), _t(1, 8, 3, 64), "same shape"),
        (_t(8, 2, 64), _t(8, 2, 64), _t(8, 2, 64), "4-D"),
        (_t(1, 1, 8, 2, 64), _t(1, 1, 8, 2, 64), _t(1, 1, 8, 2, 64), "4-D"),
        (_t(1, 8, 2, 64), _t(1, 8, 2, 64, dtype=F16), _t(1, 8, 2, 64), "one dtype"),
        (
            _t(1, 8, 2, 64, dtype=torch.float64),
            _t(1, 8, 2, 64, dtype=torch.float64),
            _t(1, 8, 2, 64, dtype=torch.float64),
            "dtype must be one of",
        ),
    ],
    ids=["d48", "d256", "N-mismatch", "H-mismatch", "3d", "5d", "mixed-dtype", "float64"],
)
def test_bad_inputs_raise_kernel_error(q, k, v, match):
    with pytest.raises(KernelError, match=match):
        attention(q, k, v)


def test_direct_op_call_is_checked_too():
    x = _t(1, 8, 2, 48)
    with pytest.raises(KernelError, match="head_dim"):
        torch.ops.vit_deploy.attention(x, x, x)


def test_cpu_without_interpreter_is_unavailable():
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1") as info:
        check_device_support("cpu", None, F32, interpreter=False)
    assert "CUDA" in str(info.value)
    check_device_support("cpu", None, F32, interpreter=True)  # the interpreter runs it


@pytest.mark.parametrize(
    "capability, dtype, ok",
    [
        ((9, 0), BF16, True),
        ((8, 0), BF16, True),
        ((7, 5), BF16, False),  # Turing: no bf16 arithmetic
        ((7, 5), F16, True),
        ((7, 0), F32, True),
        ((6, 1), F16, False),  # Pascal: below Triton's floor
        (None, BF16, True),  # ROCm: no NVIDIA capability to check
    ],
)
def test_device_capability_check(capability, dtype, ok):
    if ok:
        check_device_support("cuda", capability, dtype, interpreter=False)
    else:
        with pytest.raises(KernelUnavailableError, match="compute capability >= "):
            check_device_support("cuda", capability, dtype, interpreter=False)


def test_missing_triton_is_a_clear_error(monkeypatch):
    # Re-import the package with triton hidden; monkeypatch restores sys.modules after.
    monkeypatch.setitem(sys.modules, "triton", None)
    for name in [m for m in sys.modules if m.startswith("vit_deploy.kernels")]:
        monkeypatch.delitem(sys.modules, name)
    # (A fresh import defines a fresh TritonNotInstalledError class: match on its bases.)
    with pytest.raises(KernelUnavailableError, match="needs Triton") as info:
        importlib.import_module("vit_deploy.kernels")
    assert isinstance(info.value, ImportError)
    assert type(info.value).__name__ == TritonNotInstalledError.__name__
    # The model turns it into a ConfigError at build time, naming the working paths.
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match="needs Triton"):
        create_model(cfg, attention="triton")


# -- benchmark -------------------------------------------------------------------------


def test_benchmark_without_cuda_measures_nothing(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_attention.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert "no CUDA device: nothing measured" in run.stdout + run.stderr
    assert not any(tmp_path.iterdir()), "wrote results without measuring"


# -- on a GPU ------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
def test_gpu_vit_b_shape_matches_sdpa(dtype):
    if dtype == BF16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs compute capability >= 8.0")
    q, k, v = make_qkv(32, 197, 12, 64, dtype)
    out = attention(q, k, v)
    want = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert not torch.isnan(out).any()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(out, want, atol=atol, rtol=rtol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("N, H, d", [(577, 12, 64), (257, 16, 80), (65, 4, 96), (50, 2, 128)])
def test_gpu_shapes_match_reference(N, H, d, few_configs):
    q, k, v = make_qkv(4, N, H, d, F16)
    assert_close(attention(q, k, v), reference(q, k, v), F16)


@pytest.mark.gpu
@gpu
def test_gpu_fp32_is_not_tf32():
    # tl.dot would use TF32 for fp32 by default (~1e-3 error); the kernel asks for IEEE.
    q, k, v = make_qkv(2, 197, 3, 64, F32)
    assert_close(attention(q, k, v), reference(q, k, v), F32)
