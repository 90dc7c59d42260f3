"""Foreign checkpoint layouts to ours: timm-named tensors plus a ``ViTConfig``.

Three layouts come in: timm state dicts (already our names), Hugging Face
``ViTModel`` / ``ViTForImageClassification`` and the original Google ``.npz``
(JAX) release. Each converter only renames and reshapes; tensors it does not
recognise are kept under their own names so ``check_state_dict`` lists them as
unexpected instead of dropping them silently.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from vit_deploy.config import INTERPOLATIONS, Preprocess, ViTConfig
from vit_deploy.errors import CheckpointError, CheckpointMismatchError, ConfigError

# timm's head counts for the standard widths; other widths fall back to dim // 64.
STANDARD_NUM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Training checkpoints wrap the weights; these are the wrappers we look inside.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# DataParallel / DistributedDataParallel and torch.compile prefix every name.
STRIP_PREFIXES = ("module.", "_orig_mod.")
HF_DEFAULT_EPS = 1e-12
JAX_EPS = 1e-6
# PIL resample codes as written in Hugging Face preprocessor_config.json
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The flat name -> tensor dict inside a loaded checkpoint object."""
    for _ in range(len(WRAPPER_KEYS)):
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source}: expected a state dict (a dict of tensors), got {type(obj).__name__}"
        )
    others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointError(
            f"{source}: expected a dict of tensors (or one wrapped under {'/'.join(WRAPPER_KEYS)}), "
            f"got non-tensor entries: {', '.join(sorted(others)[:10])}"
        )
    state = dict(obj)
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def is_hf_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def default_num_heads(embed_dim: int, source: str) -> int:
    if embed_dim in STANDARD_NUM_HEADS:
        return STANDARD_NUM_HEADS[embed_dim]
    if embed_dim % 64:
        raise CheckpointError(
            f"{source}: cannot guess num_heads for embed_dim {embed_dim} (no 64-wide heads fit); "
            "pass config= (a ViTConfig or preset name)"
        )
    warnings.warn(
        f"{source}: num_heads is not stored in the checkpoint; guessed {embed_dim // 64} "
        f"(embed_dim {embed_dim} / 64). Pass config= if that is wrong: outputs would be wrong "
        "while every shape still fits",
        stacklevel=4,  # the caller of load_model
    )
    return embed_dim // 64


def mlp_ratio(hidden: int, dim: int) -> float:
    """hidden / dim, nudged up one ulp where the model's int(dim * ratio) would truncate
    to hidden - 1 (e.g. 120 / 88)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else math.nextafter(ratio, math.inf)


def infer_config(
    state: Mapping[str, torch.Tensor],
    source: str,
    num_heads: int | None = None,
    norm_eps: float = 1e-6,
    preprocess: Preprocess | None = None,
    labels: tuple[str, ...] = (),
) -> ViTConfig:
    """The architecture a timm-named state dict describes (num_heads is not in the shapes)."""
    for name in ("patch_embed.proj.weight", "pos_embed"):
        if name not in state:
            found = ", ".join(sorted(state)[:8])
            raise CheckpointError(
                f"{source}: expected a ViT state dict with {name}, found none (names start: {found})"
            )
    proj = state["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(
            f"{source}: patch_embed.proj.weight: expected (dim, channels, p, p), got {tuple(proj.shape)}"
        )
    embed_dim, in_chans, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not block_ids:
        raise CheckpointError(f"{source}: expected transformer blocks (blocks.0.*), found none")
    class_token = "cls_token" in state
    tokens = state["pos_embed"].shape[1]
    grid = math.isqrt(max(tokens - int(class_token), 0))
    if grid == 0 or grid**2 != tokens - int(class_token):
        raise CheckpointError(
            f"{source}: pos_embed has {tokens} positions; expected {int(class_token)} class "
            "position(s) plus a square grid of patches"
        )
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    has_norm, has_fc_norm = "norm.weight" in state, "fc_norm.weight" in state
    # timm: avg pooling puts the final norm after pooling (fc_norm) and has no norm;
    # JAX "gap" models (no class token) normalise every token, then average.
    global_pool = "avg" if has_fc_norm or not class_token else "token"
    fc_norm = has_fc_norm and not has_norm if global_pool == "avg" else None
    img_size = grid * patch_size
    try:
        return ViTConfig(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
            embed_dim=embed_dim,
            depth=max(block_ids) + 1,
            num_heads=num_heads or default_num_heads(embed_dim, source),
            mlp_ratio=mlp_ratio(fc1.shape[0], embed_dim) if fc1 is not None else 4.0,
            qkv_bias="blocks.0.attn.qkv.bias" in state,
            class_token=class_token,
            global_pool=global_pool,
            fc_norm=fc_norm,
            norm_eps=norm_eps,
            labels=labels,
            preprocess=preprocess or default_preprocess(img_size),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{source}: the tensors describe no valid ViT: {exc}") from exc


def add_class_position(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give the class token a zero position when the checkpoint has none.

    timm's ``no_embed_class`` and big_vision add positions to the patches only and
    then prepend the class token: the same as a class position of zeros.
    """
    pos, cls = state.get("pos_embed"), state.get("cls_token")
    if pos is None or cls is None or pos.ndim != 3:
        return state
    n = pos.shape[1]
    if math.isqrt(n) ** 2 == n and math.isqrt(n - 1) ** 2 != n - 1:
        state = dict(state, pos_embed=torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1))
    return state


def default_preprocess(img_size: int) -> Preprocess:
    # timm's ViT defaults (mean/std 0.5, bicubic); its 384-px fine-tunes use no crop margin.
    return Preprocess(img_size=img_size, crop_pct=1.0 if img_size >= 384 else 0.9)


# ---------------------------------------------------------------- Hugging Face

_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
# Per-layer module names: the on-disk names, and transformers 5's in-memory ones.
_HF_LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_HF_LAYER_KEY = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def hf_to_timm(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename HF ViT tensors to timm's; query/key/value are concatenated into qkv."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    qkv_names: dict[tuple[int, str], list[str]] = {}
    pooler = []
    for name, tensor in state.items():
        key = name[4:] if name.startswith("vit.") else name
        layer = _HF_LAYER_KEY.match(key)
        if key in _HF_TOP:
            out[_HF_TOP[key]] = tensor
        elif key.startswith("pooler."):
            pooler.append(name)
        elif layer and layer.group(2) in _HF_QKV:
            slot = (int(layer.group(1)), layer.group(3))
            qkv.setdefault(slot, {})[_HF_QKV[layer.group(2)]] = tensor
            qkv_names.setdefault(slot, []).append(name)
        elif layer and layer.group(2) in _HF_LAYER:
            i, module, kind = layer.groups()
            out[f"blocks.{i}.{_HF_LAYER[module]}.{kind}"] = tensor
        else:
            out[name] = tensor  # reported as unexpected by check_state_dict
    for (i, kind), parts in qkv.items():
        if len(parts) == 3:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
        else:  # incomplete: keep the originals so the mismatch error names them
            out.update({n: state[n] for n in qkv_names[(i, kind)]})
    if pooler:
        warnings.warn(
            f"{source}: ignored the Hugging Face pooler ({', '.join(sorted(pooler))}): "
            "embed() returns the normalised class token (last_hidden_state[:, 0]), "
            "not pooler_output",
            stacklevel=4,  # the caller of load_model
        )
    return out


def _square(value, name: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{source}: {name}: expected a square size, got {value}")
        value = value[0]
    return int(value)


def hf_preprocess(img_size: int, processor: Mapping | None, source: str) -> Preprocess:
    """ViTImageProcessor's settings (defaults: resize to image_size, bilinear, mean/std 0.5).

    HF resizes straight to height x width; our pipeline resizes the shorter side and
    centre-crops with crop_pct=1.0, which is the same for square images.
    """
    processor = processor or {}
    resample = processor.get("resample", 2)
    interpolation = PIL_RESAMPLE.get(resample)
    if interpolation is None:
        warnings.warn(
            f"{source}: preprocessor resample={resample} has no equivalent here "
            f"(expected one of {sorted(PIL_RESAMPLE)}); using bilinear",
            stacklevel=6,  # the caller of load_model
        )
        interpolation = "bilinear"
    normalize = processor.get("do_normalize", True)
    mean = processor.get("image_mean", [0.5] * 3) if normalize else [0.0] * 3
    std = processor.get("image_std", [0.5] * 3) if normalize else [1.0] * 3
    return Preprocess(
        img_size=img_size, crop_pct=1.0, interpolation=interpolation, mean=mean, std=std
    )


def hf_config(
    hf: Mapping, state: Mapping[str, torch.Tensor], source: str, processor: Mapping | None = None
) -> ViTConfig:
    """Our config from a HF ViT config.json and the (already renamed) tensors."""
    if hf.get("model_type") != "vit":
        raise CheckpointError(
            f"{source}: expected a Hugging Face ViT (model_type 'vit'), got "
            f"model_type {hf.get('model_type')!r}"
        )
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(
            f"{source}: hidden_act: expected 'gelu' (exact erf GELU, the only one our MLP has), "
            f"got {act!r}"
        )
    dim = int(hf.get("hidden_size", 768))
    img_size = _square(hf.get("image_size", 224), "image_size", source)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    id2label = hf.get("id2label") or {}
    labels = tuple(id2label[k] for k in sorted(id2label, key=int))
    if len(labels) != num_classes or all(n == f"LABEL_{i}" for i, n in enumerate(labels)):
        labels = ()  # HF writes LABEL_0.. placeholders when there are no real names
    try:
        return ViTConfig(
            img_size=img_size,
            patch_size=_square(hf.get("patch_size", 16), "patch_size", source),
            in_chans=int(hf.get("num_channels", 3)),
            num_classes=num_classes,
            embed_dim=dim,
            depth=int(hf.get("num_hidden_layers", 12)),
            num_heads=int(hf.get("num_attention_heads", 12)),
            mlp_ratio=mlp_ratio(int(hf.get("intermediate_size", 4 * dim)), dim),
            qkv_bias=bool(hf.get("qkv_bias", True)),
            norm_eps=float(hf.get("layer_norm_eps", HF_DEFAULT_EPS)),
            labels=labels,
            preprocess=hf_preprocess(img_size, processor, source),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{source}: config.json describes no valid ViT: {exc}") from exc


# ---------------------------------------------------------------- timm hub folder


def timm_dir_hints(cfg: Mapping, source: str) -> dict:
    """num_heads, labels and preprocessing from a timm hub config.json, when stated."""
    from vit_deploy.config import PRESETS

    arch = str(cfg.get("architecture", ""))
    args = cfg.get("model_args") or {}
    hints: dict = {}
    if "num_heads" in args:
        hints["num_heads"] = int(args["num_heads"])
    elif arch in PRESETS:
        hints["num_heads"] = PRESETS[arch].num_heads
    names = cfg.get("label_names")
    if isinstance(names, Mapping):
        names = [names[k] for k in sorted(names, key=int)]
    if names and len(names) == cfg.get("num_classes"):
        hints["labels"] = tuple(str(n) for n in names)
    pre = cfg.get("pretrained_cfg") or {}
    if "input_size" in pre:
        interpolation = pre.get("interpolation", "bicubic")
        try:
            hints["preprocess"] = Preprocess(
                img_size=int(pre["input_size"][-1]),
                crop_pct=float(pre.get("crop_pct", 0.9)),
                interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
                mean=pre.get("mean", (0.5, 0.5, 0.5)),
                std=pre.get("std", (0.5, 0.5, 0.5)),
            )
        except ConfigError as exc:
            raise CheckpointError(f"{source}: pretrained_cfg: {exc}") from exc
    return hints


# ---------------------------------------------------------------- Google .npz (JAX)


def npz_to_timm(arrays: Mapping[str, np.ndarray], source: str) -> tuple[dict, int]:
    """Rename and transpose the JAX ViT release to timm's layout; also returns num_heads.

    Two layouts: the paper's (google-research/vision_transformer: encoderblock_{i}
    with LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and
    big_vision's (LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
    MlpBlock_0, top-level pos_embedding, blocks optionally stacked in one
    "encoderblock"). Linear kernels are stored (in, out): transposed here.
    """
    roots = [k[: -len("embedding/kernel")] for k in arrays if k.endswith("embedding/kernel")]
    roots = [r for r in roots if r == "" or r.endswith("/")]
    if not roots:
        raise CheckpointError(
            f"{source}: expected a Google ViT .npz with embedding/kernel, found none "
            f"(names start: {', '.join(sorted(arrays)[:8])})"
        )
    prefix = roots[0]
    w = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    if any(k.startswith("pre_logits/") for k in w):
        raise CheckpointError(
            f"{source}: has a representation layer (pre_logits/*) before the head; that is "
            "not supported. Use a checkpoint without it (e.g. the ImageNet-1k fine-tunes)"
        )
    stacked = "Transformer/encoderblock/LayerNorm_0/scale" in w
    big_vision = stacked or "pos_embedding" in w
    mha, ln2, mlp = ("0", "1", "0") if big_vision else ("1", "2", "3")
    if stacked:
        depth = w["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
    else:
        ids = {int(m.group(1)) for k in w if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
        depth = max(ids) + 1 if ids else 0
    blocks = [
        ("Transformer/encoderblock/", i) if stacked else (f"Transformer/encoderblock_{i}/", None)
        for i in range(depth)
    ]
    pos_name = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    needed = ["embedding/bias", pos_name] + [
        p + name
        for p in dict.fromkeys(p for p, _ in blocks)
        for name in _npz_block_names(mha, ln2, mlp)
    ]
    missing = [n for n in needed if n not in w]
    if missing:
        raise CheckpointMismatchError(missing=[prefix + n for n in missing], source=source)
    used: set[str] = set()

    def take(name: str, i: int | None = None) -> torch.Tensor:
        used.add(name)
        try:
            a = np.asarray(w[name], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: {prefix}{name}: expected a float array, got dtype {w[name].dtype}"
            ) from exc
        return torch.from_numpy(a[i] if i is not None else a)

    state: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": take("embedding/kernel").permute(3, 2, 0, 1),  # HWIO -> OIHW
        "patch_embed.proj.bias": take("embedding/bias"),
        "pos_embed": take(pos_name),
    }
    if "cls" in w:
        state["cls_token"] = take("cls")
    num_heads = 0
    for i, (p, j) in enumerate(blocks):
        att = f"{p}MultiHeadDotProductAttention_{mha}/"
        q = take(f"{att}query/kernel", j)  # (D, H, d)
        num_heads = q.shape[1]
        kernels = [q] + [take(f"{att}{n}/kernel", j) for n in ("key", "value")]
        biases = [take(f"{att}{n}/bias", j) for n in ("query", "key", "value")]  # (H, d)
        b = f"blocks.{i}."
        state[b + "attn.qkv.weight"] = torch.cat([k.flatten(1).T for k in kernels])
        state[b + "attn.qkv.bias"] = torch.cat([x.flatten() for x in biases])
        state[b + "attn.proj.weight"] = take(f"{att}out/kernel", j).flatten(0, 1).T  # (H, d, D)
        state[b + "attn.proj.bias"] = take(f"{att}out/bias", j)
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", f"LayerNorm_{ln2}")):
            state[b + ours + ".weight"] = take(f"{p}{theirs}/scale", j)
            state[b + ours + ".bias"] = take(f"{p}{theirs}/bias", j)
        for r in range(2):
            dense = f"{p}MlpBlock_{mlp}/Dense_{r}/"
            state[f"{b}mlp.fc{r + 1}.weight"] = take(dense + "kernel", j).T
            state[f"{b}mlp.fc{r + 1}.bias"] = take(dense + "bias", j)
    if "Transformer/encoder_norm/scale" in w:
        state["norm.weight"] = take("Transformer/encoder_norm/scale")
        state["norm.bias"] = take("Transformer/encoder_norm/bias")
    if "head/kernel" in w:
        state["head.weight"] = take("head/kernel").T
        state["head.bias"] = take("head/bias")
    for name in sorted(set(w) - used):  # reported as unexpected by check_state_dict
        state[prefix + name] = torch.from_numpy(np.asarray(w[name]))
    return {k: v.contiguous() for k, v in state.items()}, num_heads


def _npz_block_names(mha: str, ln2: str, mlp: str) -> list[str]:
    att = f"MultiHeadDotProductAttention_{mha}/"
    names = [f"{att}{n}/{t}" for n in ("query", "key", "value", "out") for t in ("kernel", "bias")]
    names += [f"LayerNorm_{n}/{t}" for n in ("0", ln2) for t in ("scale", "bias")]
    return names + [f"MlpBlock_{mlp}/Dense_{r}/{t}" for r in (0, 1) for t in ("kernel", "bias")]
