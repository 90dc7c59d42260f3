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


class PatchEmbed(nn.Module):
    """Image to patch tokens by a Conv2d with kernel = stride = patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

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
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf form, as timm, HF and the paper's JAX code
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        norm_eps: float,
        attention: str,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, impl=attention)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
