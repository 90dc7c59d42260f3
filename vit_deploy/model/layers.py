"""The parts a ViT is made of: patch embedding, attention, MLP, encoder block.

Attention has three paths, chosen once when the module is built:
``math`` (the reference), ``sdpa`` (torch's fused op) and ``triton``
(our kernel, ``vit_deploy.kernels``). All three share the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vit_deploy.errors import ConfigError

ATTENTION_IMPLS = ("math", "sdpa", "triton")


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_probs: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ / √d) V for (..., N, d) tensors: the reference path.

    The scale is applied to Q before the first matmul: that is the pattern
    TensorRT's MHA fusion matches, and it keeps the scores smaller in fp16.
    """
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    probs = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    out = probs @ v
    return (out, probs) if return_probs else out


def _load_triton_attention():
    try:
        from vit_deploy.kernels import attention as triton_attention
    except ImportError as exc:  # triton not installed, or the kernel module missing
        raise ConfigError(
            f"attention='triton' needs the fused kernel (vit_deploy.kernels) and Triton: {exc}. "
            f"Expected one of {ATTENTION_IMPLS}; 'math' and 'sdpa' work everywhere."
        ) from exc
    return triton_attention


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """timm's activation names; each exports to ONNX as plain ops (Erf, Tanh, Sigmoid)."""
    if name == "gelu":
        return nn.GELU()  # exact erf form, as the paper's JAX code, timm and HF
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")  # SigLIP; HF's gelu_pytorch_tanh / gelu_new
    if name == "quick_gelu":
        return QuickGELU()
    raise ConfigError(f"act_layer: expected one of gelu, gelu_tanh, quick_gelu, got {name!r}")


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT; DINOv2 and DeiT III use it)."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class PatchEmbed(nn.Module):
    """Image to patch tokens by a Conv2d with kernel = stride = patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, impl: str = "math"):
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention: expected one of {ATTENTION_IMPLS}, got {impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self._triton_attention = _load_triton_attention() if impl == "triton" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        if self.impl == "triton":
            # The kernel reads q, k, v through strides straight out of qkv and
            # writes (B, N, H, d), the layout the out-projection wants.
            q, k, v = qkv.unbind(2)
            out = self._triton_attention(q, k, v).reshape(B, N, C)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
            if self.impl == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                out = math_attention(q, k, v)
            out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj(out)

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, N, N) attention probabilities, always from the reference path:
        the fused kernels never form this matrix."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return math_attention(q, k, v, return_probs=True)[1]


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act_layer: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(act_layer)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """One encoder block; ``block_fn`` says where the norms sit:

    - ``Block`` (pre-norm, the ViT paper's): x + ls(f(norm(x)));
    - ``ResPostBlock`` (residual post-norm, timm's): x + norm(f(x)).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        norm_eps: float,
        attention: str,
        act_layer: str = "gelu",
        init_values: float | None = None,
        block_fn: str = "Block",
    ):
        super().__init__()
        if block_fn not in ("Block", "ResPostBlock"):
            raise ConfigError(f"block_fn: expected 'Block' or 'ResPostBlock', got {block_fn!r}")
        if block_fn == "ResPostBlock" and init_values is not None:
            raise ConfigError(
                "block_fn='ResPostBlock' has no LayerScale: expected init_values=None"
            )
        self.post_norm = block_fn == "ResPostBlock"
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, impl=attention)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def attention_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention sees (for attention maps)."""
        return x if self.post_norm else self.norm1(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = x + self.norm1(self.attn(x))
            return x + self.norm2(self.mlp(x))
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPool(nn.Module):
    """Multi-head attention pooling with a learned query (SigLIP's MAP head); timm's
    ``AttentionPoolLatent`` names: latent, q, kv, proj, norm, mlp. Returns (B, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float, act_layer: str):
        super().__init__()
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(self.latent).reshape(1, 1, h, d).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = math_attention(q, k, v).transpose(1, 2).reshape(B, 1, C)
        out = self.proj(out)
        out = out + self.mlp(self.norm(out))
        return out[:, 0]
