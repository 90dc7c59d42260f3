"""The Vision Transformer: tokens, pooled embedding, logits.

Parameter names follow timm's ``VisionTransformer`` so timm state dicts and
our own checkpoints share one layout.
"""

from __future__ import annotations

import torch
from torch import nn

from vit_deploy.config import ViTConfig, get_preset
from vit_deploy.errors import ConfigError, InputDTypeError, InputShapeError, NonFiniteInputError
from vit_deploy.model.layers import ATTENTION_IMPLS, AttentionPool, Block, LayerScale, PatchEmbed


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
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, d, config.use_patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if config.distilled else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, config.reg_tokens, d)) if config.reg_tokens else None
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, config.seq_len, d))
        self.norm_pre = nn.LayerNorm(d, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(
                d,
                config.num_heads,
                config.mlp_ratio,
                config.qkv_bias,
                config.norm_eps,
                attention,
                act_layer=config.act_layer,
                init_values=config.init_values,
                block_fn=config.block_fn,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.Identity() if config.use_fc_norm else nn.LayerNorm(d, eps=config.norm_eps)
        self.attn_pool = (
            AttentionPool(d, config.num_heads, config.mlp_ratio, config.norm_eps, config.act_layer)
            if config.global_pool == "map"
            else None
        )
        self.fc_norm = nn.LayerNorm(d, eps=config.norm_eps) if config.use_fc_norm else nn.Identity()
        self.proj = nn.Linear(d, config.proj_dim, bias=False) if config.proj_dim else None
        width = config.embed_dim_out
        self.head = nn.Linear(width, config.num_classes) if config.num_classes else nn.Identity()
        self.head_dist = nn.Linear(d, config.num_classes) if config.has_dist_head else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Random weights in timm's style; the head is random too (not zero) so a
        randomly initialised model still gives informative logits for parity checks."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None

        def trunc(t: torch.Tensor, std: float) -> None:
            t.copy_(torch.randn(t.shape, generator=gen).clamp_(-2, 2) * std)

        trunc(self.pos_embed, 0.02)
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                trunc(token, 1e-6)
        if self.attn_pool is not None:
            trunc(self.attn_pool.latent, 0.02)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                trunc(module.weight, 0.02)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, LayerScale):
                module.gamma.fill_(self.config.init_values)

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
        """Checked pixels -> [class, distillation, registers, patches] + positions, then
        the pre-norm if any: (B, N, D)."""
        self.check_input(x)
        x = self.patch_embed(x)
        prefix = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if prefix:
            x = torch.cat([t.expand(x.shape[0], -1, -1) for t in prefix] + [x], dim=1)
        return self.norm_pre(x + self.pos_embed)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, D), before the projection: timm's pre-logits."""
        cfg = self.config
        if cfg.global_pool == "avg":
            pooled = tokens[:, cfg.num_prefix_tokens :].mean(dim=1)
        elif cfg.global_pool == "map":
            pooled = self.attn_pool(tokens[:, cfg.num_prefix_tokens :])
        elif cfg.distilled and cfg.dist_head:  # both tokens, as timm's pre-logits
            pooled = (tokens[:, 0] + tokens[:, 1]) / 2
        else:
            pooled = tokens[:, 0]
        return self.fc_norm(pooled)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.proj is None else self.proj(pooled)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The family's image embedding: (B, embed_dim_out); see the README's table."""
        return self._project(self.pool(self.forward_features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes); the embedding when the model has no head."""
        return self.forward_all(x)[0]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) from one pass; what exporters use."""
        tokens = self.forward_features(x)
        emb = self._project(self.pool(tokens))
        if self.head_dist is None:
            return self.head(emb), emb
        # DeiT at eval: the mean of the class head and the distillation head
        return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2, emb

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the (B, H, N, N) attention probabilities from the reference path."""
        x = self.embed_tokens(x)  # the pre-norm included
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_probs(block.attention_input(x)))
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
