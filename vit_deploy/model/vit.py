"""The Vision Transformer: tokens, pooled embedding, logits.

Parameter names follow timm's ``VisionTransformer`` so timm state dicts and
our own checkpoints share one layout.
"""

from __future__ import annotations

import torch
from torch import nn

from vit_deploy.config import ViTConfig, get_preset
from vit_deploy.errors import ConfigError, InputDTypeError, InputShapeError, NonFiniteInputError
from vit_deploy.model.layers import ATTENTION_IMPLS, Block, PatchEmbed


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al., 2020) with the attention path chosen at build time.

    ``attention``: one of ``math`` (reference), ``sdpa`` (torch), ``triton`` (ours).
    ``check_finite``: opt-in check that raises on NaN/Inf inputs (costs a reduction).
    """

    def __init__(self, config: ViTConfig, attention: str = "math", check_finite: bool = False):
        super().__init__()
        self.config = config
        self.attention = attention
        self.check_finite = check_finite
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len, d))
        self.blocks = nn.ModuleList(
            Block(
                d, config.num_heads, config.mlp_ratio, config.qkv_bias, config.norm_eps, attention
            )
            for _ in range(config.depth)
        )
        self.norm = nn.Identity() if config.use_fc_norm else nn.LayerNorm(d, eps=config.norm_eps)
        self.fc_norm = nn.LayerNorm(d, eps=config.norm_eps) if config.use_fc_norm else nn.Identity()
        self.head = nn.Linear(d, config.num_classes) if config.num_classes else nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Random weights in timm's style; the head is random too (not zero) so a
        randomly initialised model still gives informative logits for parity checks."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None

        def trunc(t: torch.Tensor, std: float) -> None:
            t.copy_(torch.randn(t.shape, generator=gen).clamp_(-2, 2) * std)

        trunc(self.pos_embed, 0.02)
        if self.cls_token is not None:
            trunc(self.cls_token, 1e-6)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                trunc(module.weight, 0.02)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a typed error, saying expected vs got, for input the model cannot take."""
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise InputDTypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise InputShapeError(
                f"expected a 4-D (batch, channels, height, width) tensor, got {x.ndim}-D "
                f"shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InputDTypeError(
                f"expected a floating-point tensor (normalised pixels), got {x.dtype}"
            )
        if x.shape[1] != cfg.in_chans:
            raise InputShapeError(f"expected {cfg.in_chans} channels, got {x.shape[1]}")
        if x.shape[2] != cfg.img_size or x.shape[3] != cfg.img_size:
            raise InputShapeError(
                f"Input size ({x.shape[2]}x{x.shape[3]}) doesn't match model "
                f"({cfg.img_size}x{cfg.img_size}); resize the image, or rebuild the model "
                f"with img_size={x.shape[2]} to resample its position embedding"
            )
        if self.check_finite and not torch.compiler.is_compiling():
            if not torch.isfinite(x).all():
                raise NonFiniteInputError("expected finite pixel values, got NaN or Inf")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block (and the final norm): (B, N, D)."""
        x = self.embed_tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Checked pixels -> patch tokens with the CLS token and position embedding: (B, N, D)."""
        self.check_input(x)
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.global_pool == "avg":
            patch_tokens = tokens[:, 1:] if self.cls_token is not None else tokens
            pooled = patch_tokens.mean(dim=1)
        else:
            pooled = tokens[:, 0]
        return self.fc_norm(pooled)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled pre-head embedding: (B, D)."""
        return self.pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes); the embedding when the model has no head."""
        return self.head(self.embed(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) from one pass; what exporters use."""
        emb = self.embed(x)
        return self.head(emb), emb

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the (B, H, N, N) attention probabilities from the reference path."""
        x = self.embed_tokens(x)
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_probs(block.norm1(x)))
            x = block(x)
        return maps


def create_model(
    preset_or_config: str | ViTConfig,
    *,
    attention: str = "math",
    check_finite: bool = False,
    seed: int | None = 0,
    **overrides,
) -> VisionTransformer:
    """A model with random weights from a preset name or a config.

    ``overrides`` change config fields (e.g. ``num_classes=10``, ``img_size=384``).
    To load weights, use ``vit_deploy.load_model``.
    """
    if attention not in ATTENTION_IMPLS:
        # checked here too so the error comes before any weights are allocated
        raise ConfigError(f"attention: expected one of {ATTENTION_IMPLS}, got {attention!r}")
    if isinstance(preset_or_config, ViTConfig):
        cfg = preset_or_config.replace(**overrides) if overrides else preset_or_config
    else:
        cfg = get_preset(preset_or_config, **overrides)
    model = VisionTransformer(cfg, attention=attention, check_finite=check_finite)
    if seed is not None:
        model.reset_parameters(seed)
    return model.eval()
