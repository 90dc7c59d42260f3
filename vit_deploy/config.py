"""Model and preprocessing configuration, and the named presets.

``ViTConfig`` carries every hyper-parameter of the model; ``Preprocess`` carries
what a serving pipeline must do to an image before the model sees it. Both
round-trip through plain dicts so they can live in JSON manifests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vit_deploy.errors import ConfigError, UnknownPresetError

# "token": the class token; "avg": mean of the patch tokens; "map": attention pooling
# with a learned query (SigLIP's MAP head, timm's AttentionPoolLatent)
POOLING_MODES = ("token", "avg", "map")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# "center": resize the shorter side to resize_size, centre-crop; "squash": resize to a
# resize_size square, aspect ratio not kept, then centre-crop (Hugging Face's processors)
CROP_MODES = ("center", "squash")
# timm's names: exact erf GELU; tanh-approximated GELU; CLIP's x * sigmoid(1.702 x)
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
# timm's block classes: pre-norm (x + f(norm(x))), residual post-norm (x + norm(f(x)))
BLOCK_FNS = ("Block", "ResPostBlock")


@dataclass(frozen=True)
class Preprocess:
    """Eval-time preprocessing: resize shorter side to ``img_size / crop_pct``,
    centre-crop ``img_size``, scale to [0, 1], normalise by ``mean``/``std``.
    Channel order is RGB."""

    img_size: int = 224
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "RGB"
    crop_mode: str = "center"

    def __post_init__(self):
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"crop_mode: expected one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation: expected one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct: expected a value in (0, 1], got {self.crop_pct}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def resize_size(self) -> int:
        # timm's rule: scale_size = floor(img_size / crop_pct); the epsilon keeps a
        # fraction like 224 / 256 from flooring to 255
        return int(self.img_size / self.crop_pct + 1e-6)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["resize_size"] = self.resize_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ViTConfig:
    """Every hyper-parameter of a Vision Transformer (Dosovitskiy et al., 2020) and of the
    families built on it (CLIP, DINOv2, SigLIP, DeiT, DeiT III); names follow timm's
    ``VisionTransformer`` arguments.

    Tokens are ``[class] [distillation] [registers] patches``; ``pos_embed`` covers all of
    them (a checkpoint without positions for some prefix tokens gets zero rows there).
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0 = no head; forward() then returns the embedding
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: str = "token"  # "token": CLS token; "avg": mean of the patch tokens
    # timm applies the final norm after pooling when pooling by mean ("fc_norm");
    # None means "timm's rule": fc_norm exactly when global_pool == "avg".
    fc_norm: bool | None = None
    norm_eps: float = 1e-6
    act_layer: str = "gelu"
    pre_norm: bool = False  # a LayerNorm on the tokens before the blocks (CLIP's ln_pre)
    patch_bias: bool | None = None  # None: timm's rule, a bias exactly when not pre_norm
    init_values: float | None = None  # LayerScale (ls1/ls2.gamma) when set: DINOv2, DeiT III
    reg_tokens: int = 0  # register tokens (DINOv2 with registers)
    distilled: bool = False  # DeiT's distillation token (and head_dist when dist_head)
    dist_head: bool = True  # False: a distillation token but one head on the class token
    block_fn: str = "Block"
    proj_dim: int = 0  # a bias-free projection after pooling (CLIP's image embedding)
    labels: tuple[str, ...] = field(default=(), compare=False)
    preprocess: Preprocess = field(default_factory=Preprocess, compare=False)

    def __post_init__(self):
        problems = []
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name}: expected a positive int, got {value!r}")
        if self.num_classes < 0:
            problems.append(f"num_classes: expected >= 0, got {self.num_classes}")
        if self.global_pool not in POOLING_MODES:
            problems.append(
                f"global_pool: expected one of {POOLING_MODES}, got {self.global_pool!r}"
            )
        if self.global_pool == "token" and not self.class_token:
            problems.append("global_pool='token' needs class_token=True (or use global_pool='avg')")
        for name, value, allowed in (
            ("act_layer", self.act_layer, ACTIVATIONS),
            ("block_fn", self.block_fn, BLOCK_FNS),
        ):
            if value not in allowed:
                problems.append(f"{name}: expected one of {allowed}, got {value!r}")
        if self.distilled and (not self.class_token or self.global_pool != "token"):
            problems.append("distilled=True needs class_token=True and global_pool='token'")
        if self.distilled and self.proj_dim:
            problems.append("distilled=True with proj_dim: expected one of the two, got both")
        for name in ("reg_tokens", "proj_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name}: expected an int >= 0, got {value!r}")
        if self.init_values is not None and not self.init_values > 0:
            problems.append(
                f"init_values: expected a positive float or None, got {self.init_values}"
            )
        if not self.norm_eps > 0:
            problems.append(f"norm_eps: expected > 0, got {self.norm_eps}")
        if not problems and self.embed_dim % self.num_heads:
            problems.append(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if not problems and self.img_size % self.patch_size:
            problems.append(
                f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.labels and self.num_classes and len(self.labels) != self.num_classes:
            problems.append(f"labels: expected {self.num_classes} names, got {len(self.labels)}")
        if problems:
            raise ConfigError("invalid ViTConfig: " + "; ".join(problems))
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", Preprocess.from_dict(self.preprocess))
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation, registers."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def seq_len(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

    @property
    def use_patch_bias(self) -> bool:
        return not self.pre_norm if self.patch_bias is None else self.patch_bias

    @property
    def has_dist_head(self) -> bool:
        return self.distilled and self.dist_head and self.num_classes > 0

    @property
    def embed_dim_out(self) -> int:
        """Width of ``embed()``: the projection's when there is one."""
        return self.proj_dim or self.embed_dim

    def replace(self, **changes) -> ViTConfig:
        """A copy with some fields changed. Changing img_size keeps the
        preprocessing in step (same crop fraction, new crop size)."""
        if "img_size" in changes and "preprocess" not in changes:
            changes["preprocess"] = dataclasses.replace(
                self.preprocess, img_size=changes["img_size"]
            )
        return dataclasses.replace(self, **changes)

    def flops_per_image(self) -> int:
        """Multiply-adds x 2 of one forward pass (matmuls and the patch conv)."""
        n, d, c = self.seq_len, self.embed_dim, self.in_chans
        hidden = int(d * self.mlp_ratio)
        patch = self.num_patches * (c * self.patch_size**2) * d
        per_block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * hidden
        head = self.embed_dim_out * self.num_classes + d * self.proj_dim
        return 2 * (patch + self.depth * per_block + head)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["labels"] = list(self.labels)
        d["preprocess"] = self.preprocess.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown ViTConfig fields: {unknown}; expected some of {sorted(known)}"
            )
        d = dict(d)
        if "preprocess" in d and isinstance(d["preprocess"], dict):
            d["preprocess"] = Preprocess.from_dict(d["preprocess"])
        if "labels" in d:
            d["labels"] = tuple(d["labels"])
        return cls(**d)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _preset(
    img_size,
    patch_size,
    embed_dim,
    depth,
    num_heads,
    crop_pct=0.9,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_mode="center",
    **fields,
) -> ViTConfig:
    return ViTConfig(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        preprocess=Preprocess(
            img_size=img_size, crop_pct=crop_pct, mean=mean, std=std, crop_mode=crop_mode
        ),
        **fields,
    )


_DEIT = dict(crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)
_DEIT3 = dict(_DEIT, init_values=1e-6)  # timm's deit3 also drops the class position
_CLIP = dict(crop_pct=1.0, mean=CLIP_MEAN, std=CLIP_STD, pre_norm=True, norm_eps=1e-5)
_CLIP_EMBED = dict(_CLIP, num_classes=0)
_DINOV2 = dict(crop_pct=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, init_values=1e-5)
_DINOV2 = dict(_DINOV2, num_classes=0)
# timm's SigLIP ports use exact GELU; Hugging Face's config says gelu_pytorch_tanh
_SIGLIP = dict(crop_pct=1.0, num_classes=0, class_token=False, global_pool="map")

# The table of known architectures, named as timm names them; what no tensor shape
# shows (heads, activation, eps, pre/post-norm, pooling, token layout) comes from here
# when a checkpoint does not state it. Architectures per the papers and timm.
PRESETS: dict[str, ViTConfig] = {
    "vit_tiny_patch16_224": _preset(224, 16, 192, 12, 3),
    "vit_small_patch16_224": _preset(224, 16, 384, 12, 6),
    "vit_small_patch32_224": _preset(224, 32, 384, 12, 6),
    "vit_base_patch16_224": _preset(224, 16, 768, 12, 12),
    "vit_base_patch32_224": _preset(224, 32, 768, 12, 12),
    "vit_large_patch16_224": _preset(224, 16, 1024, 24, 16),
    "vit_base_patch16_384": _preset(384, 16, 768, 12, 12, crop_pct=1.0),
    "vit_large_patch16_384": _preset(384, 16, 1024, 24, 16, crop_pct=1.0),
    "vit_huge_patch14_224": _preset(224, 14, 1280, 32, 16),
    # 16 heads at width 768, mean-pooled without a class token
    "vit_base_patch16_gap_224": _preset(
        224, 16, 768, 12, 16, class_token=False, global_pool="avg", fc_norm=False
    ),
    # residual post-norm blocks (timm's ResPostBlock)
    "vit_base_patch16_rpn_224": _preset(
        224,
        16,
        768,
        12,
        12,
        qkv_bias=False,
        class_token=False,
        global_pool="avg",
        block_fn="ResPostBlock",
    ),
    "deit_tiny_patch16_224": _preset(224, 16, 192, 12, 3, **_DEIT),
    "deit_small_patch16_224": _preset(224, 16, 384, 12, 6, **_DEIT),
    "deit_base_patch16_224": _preset(224, 16, 768, 12, 12, **_DEIT),
    "deit_base_patch16_384": _preset(384, 16, 768, 12, 12, **dict(_DEIT, crop_pct=1.0)),
    "deit_tiny_distilled_patch16_224": _preset(224, 16, 192, 12, 3, distilled=True, **_DEIT),
    "deit_small_distilled_patch16_224": _preset(224, 16, 384, 12, 6, distilled=True, **_DEIT),
    "deit_base_distilled_patch16_224": _preset(224, 16, 768, 12, 12, distilled=True, **_DEIT),
    "deit3_small_patch16_224": _preset(224, 16, 384, 12, 6, **_DEIT3),
    "deit3_base_patch16_224": _preset(224, 16, 768, 12, 12, **_DEIT3),
    "deit3_large_patch16_224": _preset(224, 16, 1024, 24, 16, **_DEIT3),
    "vit_base_patch32_clip_224": _preset(224, 32, 768, 12, 12, proj_dim=512, **_CLIP_EMBED),
    "vit_base_patch16_clip_224": _preset(224, 16, 768, 12, 12, proj_dim=512, **_CLIP_EMBED),
    "vit_large_patch14_clip_224": _preset(224, 14, 1024, 24, 16, proj_dim=768, **_CLIP_EMBED),
    "vit_base_patch32_clip_quickgelu_224": _preset(
        224, 32, 768, 12, 12, proj_dim=512, act_layer="quick_gelu", **_CLIP_EMBED
    ),
    "vit_base_patch16_clip_quickgelu_224": _preset(
        224, 16, 768, 12, 12, proj_dim=512, act_layer="quick_gelu", **_CLIP_EMBED
    ),
    "vit_large_patch14_clip_quickgelu_224": _preset(
        224, 14, 1024, 24, 16, proj_dim=768, act_layer="quick_gelu", **_CLIP_EMBED
    ),
    "vit_small_patch14_dinov2": _preset(518, 14, 384, 12, 6, **_DINOV2),
    "vit_base_patch14_dinov2": _preset(518, 14, 768, 12, 12, **_DINOV2),
    "vit_large_patch14_dinov2": _preset(518, 14, 1024, 24, 16, **_DINOV2),
    "vit_small_patch14_reg4_dinov2": _preset(518, 14, 384, 12, 6, reg_tokens=4, **_DINOV2),
    "vit_base_patch14_reg4_dinov2": _preset(518, 14, 768, 12, 12, reg_tokens=4, **_DINOV2),
    "vit_large_patch14_reg4_dinov2": _preset(518, 14, 1024, 24, 16, reg_tokens=4, **_DINOV2),
    "vit_base_patch16_siglip_224": _preset(224, 16, 768, 12, 12, **_SIGLIP),
    "vit_base_patch16_siglip_256": _preset(256, 16, 768, 12, 12, **_SIGLIP),
    "vit_so400m_patch14_siglip_224": _preset(224, 14, 1152, 27, 16, mlp_ratio=3.7362, **_SIGLIP),
}


def get_preset(name: str, **overrides) -> ViTConfig:
    """The preset's config, with any field overridden."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
