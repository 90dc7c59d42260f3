"""The visual tower of an open_clip / OpenAI CLIP checkpoint, in timm's names.

open_clip's ``VisionTransformer``: ``conv1`` (no bias), ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.{i}`` (``ln_1``,
``attn.in_proj_*``, ``attn.out_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``, optional
``ls_1/ls_2``), ``ln_post`` and ``proj`` (stored (width, embed_dim), applied as x @ proj).
What the tensors do not show (quick-GELU or GELU, heads) comes from the folder's
``open_clip_config.json``; a bare state dict needs ``config=`` (``--config NAME``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from vit_deploy.checkpoints.convert import tensor_layout
from vit_deploy.config import CLIP_MEAN, CLIP_STD, Preprocess, ViTConfig
from vit_deploy.errors import CheckpointError, ConfigError, UnsupportedArchitectureError

CONFIG_NAME = "open_clip_config.json"
# the weight files an open_clip hub folder holds, in order of preference
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_LAYER = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.out_proj": "attn.proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_LAYER_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias|gamma)$")
_TOP = {
    "conv1.weight": "patch_embed.proj.weight",
    "ln_pre.weight": "norm_pre.weight",
    "ln_pre.bias": "norm_pre.bias",
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
}
# vision_cfg keys with nothing to do at inference, or whose default is all we support
_INERT = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
_INERT |= {"ls_init_value", "final_ln_after_pool", "pool_type", "no_ln_pre", "patch_dropout"}
_INERT |= {"output_tokens", "emb_dropout", "timm_model_name"}


def is_open_clip_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k in ("class_embedding", "visual.class_embedding") for k in state)


def visual_to_timm(
    state: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The visual tower's tensors renamed; also notes on what was dropped."""
    notes = []
    if any(k.startswith("visual.") for k in state):
        others = [k for k in state if not k.startswith("visual.")]
        if others:
            notes.append(f"dropped the text tower: {len(others)} tensor(s)")
        state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        layer = _LAYER_KEY.match(name)
        if name == "class_embedding":
            out["cls_token"] = tensor.reshape(1, 1, -1)
        elif name == "positional_embedding":
            out["pos_embed"] = tensor.unsqueeze(0)
        elif name == "proj":
            out["proj.weight"] = tensor.T.contiguous()  # x @ proj == Linear with weight proj.T
        elif name in _TOP:
            out[_TOP[name]] = tensor
        elif name.startswith("transformer.resblocks.") and name.endswith(".attn.in_proj_weight"):
            out[f"blocks.{name.split('.')[2]}.attn.qkv.weight"] = tensor
        elif name.startswith("transformer.resblocks.") and name.endswith(".attn.in_proj_bias"):
            out[f"blocks.{name.split('.')[2]}.attn.qkv.bias"] = tensor
        elif layer and layer.group(2) in ("ls_1", "ls_2"):
            out[f"blocks.{layer.group(1)}.ls{layer.group(2)[-1]}.gamma"] = tensor
        elif layer and layer.group(2) in _LAYER:
            i, module, kind = layer.groups()
            out[f"blocks.{i}.{_LAYER[module]}.{kind}"] = tensor
        else:
            out[f"visual.{name}"] = tensor  # reported as unexpected by check_state_dict
    return out, notes


def open_clip_config(meta: Mapping, state: Mapping[str, torch.Tensor], source: str) -> ViTConfig:
    """Our config from an ``open_clip_config.json`` (model_cfg + preprocess_cfg)."""
    model_cfg = meta.get("model_cfg") or {}
    vision = model_cfg.get("vision_cfg") or {}
    for key in ("attentional_pool", "attn_pooler_queries", "timm_model_name"):
        if vision.get(key):
            raise UnsupportedArchitectureError(
                f"vision_cfg.{key}={vision[key]!r} (an attention pooler or a timm trunk)",
                "open_clip",
                source,
            )
    unknown = sorted(k for k in vision if k not in _INERT and not k.startswith("attn"))
    if unknown:
        raise CheckpointError(
            f"{source}: vision_cfg {unknown}: expected only {sorted(_INERT)}; refusing to "
            "guess what they change"
        )
    fields = tensor_layout(state, source)
    width = fields["embed_dim"]
    head_width = int(vision.get("head_width", 64))
    if width % head_width:
        raise CheckpointError(
            f"{source}: width {width} is not a multiple of head_width {head_width}"
        )
    pool = vision.get("pool_type", "tok")
    if pool not in ("tok", "avg"):
        raise UnsupportedArchitectureError(f"pool_type={pool!r}", "open_clip", source)
    if pool == "avg":
        fields.update(global_pool="avg", fc_norm=bool(vision.get("final_ln_after_pool")))
    pre = meta.get("preprocess_cfg") or {}
    resize_mode = pre.get("resize_mode", "shortest")
    try:
        preprocess = Preprocess(
            img_size=fields["img_size"],
            crop_pct=1.0,
            interpolation=pre.get("interpolation", "bicubic"),
            mean=pre.get("mean", CLIP_MEAN),
            std=pre.get("std", CLIP_STD),
            crop_mode="squash" if resize_mode == "squash" else "center",
        )
        return ViTConfig(
            **fields,
            num_heads=width // head_width,
            act_layer="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
            norm_eps=1e-5,  # torch's LayerNorm default, which open_clip uses
            preprocess=preprocess,
        )
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{source}: {CONFIG_NAME} describes no valid ViT: {exc}") from exc
