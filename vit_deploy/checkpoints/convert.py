"""Foreign checkpoint layouts to ours: timm-named tensors plus a ``ViTConfig``.

Layouts: timm state dicts (already our names, config from tensors + metadata), the
original Google ``.npz`` (JAX) release and open_clip / OpenAI CLIP visual towers; Hugging
Face folders are in ``vit_deploy.checkpoints.hf``. Each converter only renames and reshapes; tensors it does not
recognise are kept under their own names so ``check_state_dict`` lists them as
unexpected instead of dropping them silently.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np
import torch

from vit_deploy.config import CROP_MODES, INTERPOLATIONS, Preprocess, ViTConfig
from vit_deploy.errors import (
    AmbiguousCheckpointError,
    CheckpointError,
    CheckpointMismatchError,
    ConfigError,
)

# timm's head counts for the standard widths; other widths fall back to dim // 64.
STANDARD_NUM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Training checkpoints wrap the weights; these are the wrappers we look inside.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# DataParallel / DistributedDataParallel and torch.compile prefix every name.
STRIP_PREFIXES = ("module.", "_orig_mod.")
JAX_EPS = 1e-6


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


def default_num_heads(embed_dim: int, source: str) -> int:
    """timm's head count for a standard width, else 64-wide heads."""
    if embed_dim in STANDARD_NUM_HEADS:
        return STANDARD_NUM_HEADS[embed_dim]
    if embed_dim % 64:
        raise AmbiguousCheckpointError(
            f"{source}: num_heads is not stored in the checkpoint and no 64-wide heads fit "
            f"embed_dim {embed_dim}; pass num_heads= (--num-heads N) or config= (--config NAME)"
        )
    return embed_dim // 64


def mlp_ratio(hidden: int, dim: int) -> float:
    """hidden / dim, nudged up one ulp where the model's int(dim * ratio) would truncate
    to hidden - 1 (e.g. 120 / 88)."""
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else math.nextafter(ratio, math.inf)


# What no tensor shape shows. timm's convention decides them for a bare state dict of a
# plain ViT (loaded with a warning naming the assumed values); for other families
# (CLIP: quick-GELU or not, eps 1e-5; SigLIP: tanh GELU) they must come from metadata.
HIDDEN_FIELDS = ("num_heads", "act_layer", "norm_eps", "block_fn")
TIMM_CONVENTION = {"act_layer": "gelu", "norm_eps": 1e-6, "block_fn": "Block"}
# timm model_args we take over as they are (same names as ViTConfig's)
MODEL_ARGS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "class_token",
    "global_pool",
    "fc_norm",
    "pre_norm",
    "reg_tokens",
    "init_values",
    "act_layer",
    "block_fn",
    "num_classes",
)
# model_args that change nothing at inference
INERT_MODEL_ARGS = (
    "dynamic_img_size",
    "dynamic_img_pad",
    "drop_rate",
    "drop_path_rate",
    "pos_drop_rate",
    "attn_drop_rate",
    "proj_drop_rate",
    "no_embed_class",
    "weight_init",
    "in_chans",
)


def tensor_layout(
    state: Mapping[str, torch.Tensor], source: str, img_size: int | None = None
) -> dict:
    """Every ViTConfig field that the tensors' names and shapes show. ``img_size`` (from
    metadata) settles the one ambiguity: tiny grids whose positions may or may not cover
    the prefix tokens (3x3 + 5 registers = 2x2 + ...)."""
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
    class_token, distilled = "cls_token" in state, "dist_token" in state
    reg = state.get("reg_token")
    reg_tokens = int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0
    prefix = int(class_token) + int(distilled) + reg_tokens
    hint = img_size // patch_size if img_size and img_size % patch_size == 0 else None
    grid = _grid(state["pos_embed"], prefix, source, hint)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    has_norm, has_fc_norm = "norm.weight" in state, "fc_norm.weight" in state
    if "attn_pool.latent" in state:
        latent = state["attn_pool.latent"]
        if latent.ndim != 3 or latent.shape[1] != 1:
            raise CheckpointError(
                f"{source}: attn_pool.latent: expected one latent query (1, 1, dim), got "
                f"{tuple(latent.shape)}"
            )
        global_pool = "map"
    else:
        # timm: avg pooling puts the final norm after pooling (fc_norm) and has no norm;
        # JAX "gap" models (no class token) normalise every token, then average.
        global_pool = "avg" if has_fc_norm or not class_token else "token"
    head = state.get("head.weight")
    return {
        "img_size": grid * patch_size,
        "patch_size": patch_size,
        "in_chans": in_chans,
        "num_classes": head.shape[0] if head is not None else 0,
        "embed_dim": embed_dim,
        "depth": max(block_ids) + 1,
        "mlp_ratio": mlp_ratio(fc1.shape[0], embed_dim) if fc1 is not None else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token,
        "global_pool": global_pool,
        "fc_norm": (has_fc_norm and not has_norm) if global_pool == "avg" else None,
        "pre_norm": "norm_pre.weight" in state,
        "patch_bias": "patch_embed.proj.bias" in state,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None,  # any: weights load
        "reg_tokens": reg_tokens,
        "distilled": distilled,
        "dist_head": "head_dist.weight" in state or head is None,
        "proj_dim": state["proj.weight"].shape[0] if "proj.weight" in state else 0,
    }


def _grid(pos: torch.Tensor, prefix: int, source: str, hint: int | None = None) -> int:
    """The square patch grid of a position table with all, none or only the first of the
    ``prefix`` tokens' positions (timm's no_embed_class; HF DINOv2 with registers)."""
    rows = pos.shape[1] if pos.ndim == 3 else -1
    grids = []
    for with_positions in dict.fromkeys((prefix, 0, min(prefix, 1))):
        grid = math.isqrt(max(rows - with_positions, 0))
        if grid and grid * grid == rows - with_positions:
            grids.append(grid)
    if hint in grids:
        return hint
    if grids:
        return grids[0]
    raise CheckpointError(
        f"{source}: pos_embed has {rows} positions; expected {prefix} prefix position(s) "
        "(or none) plus a square grid of patches"
    )


def timm_config(
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    architecture: str = "",
    model_args: Mapping | None = None,
    decided: Mapping | None = None,
    preprocess: Preprocess | None = None,
    labels: tuple[str, ...] = (),
) -> tuple[ViTConfig, dict]:
    """The config of timm-named tensors and what was assumed for it.

    Shapes come from the tensors; what they do not show comes from ``decided`` (the
    caller's num_heads, a format's fixed values), timm's ``model_args``, the table of known
    architectures (``architecture``), and only for a plain ViT from timm's convention.
    """
    from vit_deploy.checkpoints.features import refuse_unsupported
    from vit_deploy.config import PRESETS

    refuse_unsupported(state, source, architecture)
    known = PRESETS.get(architecture)
    size_hint = preprocess.img_size if preprocess else None
    fields = tensor_layout(state, source, size_hint or (known.img_size if known else None))
    hidden: dict = {}
    args = dict(model_args or {})
    if known is not None:
        differ = [
            f"{k} {getattr(known, k)} (the checkpoint: {fields[k]})"
            for k in ("embed_dim", "patch_size")
            if k not in args and getattr(known, k) != fields[k]
        ]
        if differ:
            raise CheckpointError(
                f"{source}: architecture {architecture!r} has {', '.join(differ)}; expected "
                "the architecture of these tensors (pass another --config NAME, or "
                "--num-heads N alone)"
            )
        hidden.update({k: getattr(known, k) for k in HIDDEN_FIELDS})
        hidden["global_pool"] = known.global_pool
        if known.embed_dim != fields["embed_dim"]:
            del hidden["num_heads"]  # the table's heads are for another width
        if known.proj_dim and _is_projection(state, known.proj_dim):
            fields.update(num_classes=0, proj_dim=known.proj_dim)  # timm keeps it as the head
    unknown = sorted(set(args) - set(MODEL_ARGS) - set(INERT_MODEL_ARGS))
    if unknown:
        raise AmbiguousCheckpointError(
            f"{source}: model_args {unknown} have no counterpart here (expected some of "
            f"{sorted(MODEL_ARGS)}); refusing to guess what they change"
        )
    hidden.update({k: v for k, v in args.items() if k in HIDDEN_FIELDS or k == "global_pool"})
    hidden.update(decided or {})
    undecided = [k for k in HIDDEN_FIELDS if k not in hidden]
    assumed: dict = {}
    if undecided:
        family = [f for f in ("pre_norm", "global_pool") if _family_feature(fields, f)]
        if family:
            raise AmbiguousCheckpointError(
                f"{source}: {', '.join(undecided)} are not stored in the checkpoint and this "
                f"is not a plain ViT ({'; '.join(family_words(fields))}), so timm's convention "
                f"does not decide them; pass config= (--config NAME, e.g. "
                f"{' or '.join(matching_presets(fields)) or 'a ViTConfig'}) or, for the heads "
                "alone, num_heads= (--num-heads N)"
            )
        conventional = dict(TIMM_CONVENTION, num_heads=None)
        for k in undecided:
            assumed[k] = conventional[k]
        if "num_heads" in assumed:
            assumed["num_heads"] = default_num_heads(fields["embed_dim"], source)
        hidden.update(assumed)
    if hidden.get("global_pool") and hidden["global_pool"] != fields["global_pool"]:
        if not (hidden["global_pool"] == "avg" and fields["global_pool"] == "token"):
            raise CheckpointError(
                f"{source}: {architecture or 'model_args'} pools by {hidden['global_pool']!r}, "
                f"the tensors by {fields['global_pool']!r}"
            )
        fields["global_pool"], fields["fc_norm"] = "avg", fields["fc_norm"] or False
    hidden.pop("global_pool", None)
    for k in ("img_size", "num_classes"):
        args.pop(k, None)  # the tensors' values win; the loader resamples / rebuilds
    shape_args = {k: v for k, v in args.items() if k not in HIDDEN_FIELDS and k != "global_pool"}
    fields.update({k: v for k, v in shape_args.items() if k in fields})
    try:
        cfg = ViTConfig(
            **fields,
            **hidden,
            labels=labels,
            preprocess=preprocess or _preset_preprocess(known, fields["img_size"]),
        )
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{source}: the tensors describe no valid ViT: {exc}") from exc
    return cfg, assumed


def _preset_preprocess(known: ViTConfig | None, img_size: int) -> Preprocess:
    if known is None:
        return default_preprocess(img_size)
    return dataclasses.replace(known.preprocess, img_size=img_size)


def _is_projection(state: Mapping[str, torch.Tensor], proj_dim: int) -> bool:
    """timm stores CLIP's image projection as a bias-free (zero-bias) head."""
    w, b = state.get("head.weight"), state.get("head.bias")
    return w is not None and w.shape[0] == proj_dim and (b is None or not b.any())


def _family_feature(fields: dict, name: str) -> bool:
    return bool(fields["pre_norm"]) if name == "pre_norm" else fields["global_pool"] == "map"


def family_words(fields: dict) -> list[str]:
    words = []
    if fields["pre_norm"]:
        words.append("a pre-norm before the blocks, as CLIP")
    if fields["global_pool"] == "map":
        words.append("an attention-pool head, as SigLIP")
    return words


def matching_presets(fields: dict) -> list[str]:
    """Known architectures with these tensors' widths and features, for error messages."""
    from vit_deploy.config import PRESETS

    keys = ("embed_dim", "patch_size", "pre_norm", "class_token", "reg_tokens", "distilled")
    return [
        name
        for name, cfg in PRESETS.items()
        if all(getattr(cfg, k) == fields[k] for k in keys)
        and (cfg.global_pool == "map") == (fields["global_pool"] == "map")
    ][:4]


def align_state(state: Mapping[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """The tensors in our layout for ``cfg``: zero positions for prefix tokens the
    checkpoint gives none (adding zero = no position, exactly), CLIP's head as projection."""
    state = dict(state)
    pos = state.get("pos_embed")
    prefix = cfg.num_prefix_tokens
    if pos is not None and pos.ndim == 3 and prefix:
        rows = pos.shape[1] - cfg.num_patches
        zeros = pos.new_zeros(1, prefix, pos.shape[2])
        if rows == 0:
            state["pos_embed"] = torch.cat([zeros, pos], dim=1)
        elif rows == 1 and prefix > 1 and cfg.class_token:
            state["pos_embed"] = torch.cat([pos[:, :1], zeros[:, 1:], pos[:, 1:]], dim=1)
    if cfg.proj_dim and "proj.weight" not in state and not cfg.num_classes:
        if _is_projection(state, cfg.proj_dim):
            state["proj.weight"] = state.pop("head.weight")
            state.pop("head.bias", None)
    return state


def default_preprocess(img_size: int) -> Preprocess:
    # timm's ViT defaults (mean/std 0.5, bicubic); its 384-px fine-tunes use no crop margin.
    return Preprocess(img_size=img_size, crop_pct=1.0 if img_size >= 384 else 0.9)


# ---------------------------------------------------------------- timm hub folder


def timm_dir_hints(cfg: Mapping, source: str) -> dict:
    """architecture, model_args, labels and preprocessing from a timm hub config.json."""
    hints: dict = {
        "architecture": str(cfg.get("architecture", "")),
        "model_args": dict(cfg.get("model_args") or {}),
    }
    names = cfg.get("label_names")
    if isinstance(names, Mapping):
        names = [names[k] for k in sorted(names, key=int)]
    if names and len(names) == cfg.get("num_classes"):
        hints["labels"] = tuple(str(n) for n in names)
    pre = cfg.get("pretrained_cfg") or {}
    if "input_size" in pre:
        hints["preprocess"] = timm_preprocess(pre, source)
    return hints


def timm_preprocess(pre: Mapping, source: str) -> Preprocess:
    """Preprocess from a timm pretrained_cfg (input_size, crop_pct, crop_mode, ...)."""
    interpolation = pre.get("interpolation", "bicubic")
    crop_mode = pre.get("crop_mode", "center")
    try:
        return Preprocess(
            img_size=int(pre["input_size"][-1]),
            crop_pct=float(pre.get("crop_pct", 0.9)),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
            mean=pre.get("mean", (0.5, 0.5, 0.5)),
            std=pre.get("std", (0.5, 0.5, 0.5)),
            crop_mode=crop_mode if crop_mode in CROP_MODES else "center",
        )
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: pretrained_cfg: {exc}") from exc


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
