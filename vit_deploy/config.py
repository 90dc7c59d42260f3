"""Model and preprocessing configuration, and the named presets.

``ViTConfig`` carries every hyper-parameter of the model; ``Preprocess`` carries
what a serving pipeline must do to an image before the model sees it. Both
round-trip through plain dicts so they can live in JSON manifests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vit_deploy.errors import ConfigError, UnknownPresetError

POOLING_MODES = ("token", "avg")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


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

    def __post_init__(self):
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
        # timm's rule: scale_size = floor(img_size / crop_pct)
        return int(self.img_size / self.crop_pct)

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
    """Every hyper-parameter of a Vision Transformer (Dosovitskiy et al., 2020)."""

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
    def seq_len(self) -> int:
        return self.num_patches + int(self.class_token)

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

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
        head = d * self.num_classes
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


def _preset(img_size, patch_size, embed_dim, depth, num_heads, crop_pct=0.9) -> ViTConfig:
    return ViTConfig(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        preprocess=Preprocess(img_size=img_size, crop_pct=crop_pct),
    )


# Named as timm names them; architecture per the ViT paper and timm.
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
}


def get_preset(name: str, **overrides) -> ViTConfig:
    """The preset's config, with any field overridden."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
