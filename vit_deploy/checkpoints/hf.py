"""Hugging Face folders to ours: ViT, DeiT, CLIP and SigLIP vision towers, DINOv2.

``hf_to_timm`` renames a folder's tensors to timm's names (query/key/value concatenated,
SigLIP's attention-pool head split into timm's q/kv); ``hf_config`` takes the shapes from
those tensors and what shapes do not show (heads, activation, eps) from ``config.json``;
``hf_preprocess`` reads ``preprocessor_config.json``. Tensors that are not renamed keep
their names, so ``check_state_dict`` lists them instead of dropping them silently.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping

import torch

from vit_deploy.checkpoints.convert import mlp_ratio, tensor_layout
from vit_deploy.config import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    ViTConfig,
)
from vit_deploy.errors import CheckpointError, ConfigError, UnsupportedArchitectureError

# model_type -> family; "clip" / "siglip" are whole two-tower folders (vision tower used)
FAMILIES = {
    "vit": "vit",
    "deit": "deit",
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2",
    "clip_vision_model": "clip",
    "clip": "clip",
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
}
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}
# transformers' config defaults where config.json leaves a key out
DEFAULT_EPS = {"vit": 1e-12, "deit": 1e-12, "dinov2": 1e-6, "clip": 1e-5, "siglip": 1e-6}
DEFAULT_ACT = {"vit": "gelu", "deit": "gelu", "dinov2": "gelu", "clip": "quick_gelu"}
DEFAULT_ACT["siglip"] = "gelu_pytorch_tanh"
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# each family's processor when the folder has no preprocessor_config.json, at the
# model's resolution: (crop / resize, squash?, resample, mean, std)
DEFAULT_PROCESSORS = {
    "vit": (1.0, True, 2, (0.5,) * 3, (0.5,) * 3),
    "deit": (224 / 256, True, 3, IMAGENET_MEAN, IMAGENET_STD),
    "clip": (1.0, False, 3, CLIP_MEAN, CLIP_STD),
    "dinov2": (224 / 256, False, 3, IMAGENET_MEAN, IMAGENET_STD),
    "siglip": (1.0, True, 3, (0.5,) * 3, (0.5,) * 3),
}

_PREFIXES = ("vit.", "deit.", "dinov2.", "vision_model.")
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pre_layrnorm.weight": "norm_pre.weight",  # sic, transformers' name
    "pre_layrnorm.bias": "norm_pre.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
    "visual_projection.weight": "proj.weight",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
    "head.probe": "attn_pool.latent",
    "head.attention.out_proj.weight": "attn_pool.proj.weight",
    "head.attention.out_proj.bias": "attn_pool.proj.bias",
    "head.layernorm.weight": "attn_pool.norm.weight",
    "head.layernorm.bias": "attn_pool.norm.bias",
    "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
}
# per-layer module -> ours, on-disk names and transformers 5's in-memory ones
_LAYER = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "self_attn.out_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_LAYER_SCALE = {"layer_scale1": "ls1.gamma", "layer_scale2": "ls2.gamma"}
_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
    "self_attn.q_proj": 0,
    "self_attn.k_proj": 1,
    "self_attn.v_proj": 2,
}
_LAYER_KEY = re.compile(r"^(?:encoder\.layers?|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
# tensors with no part in the image embedding: dropped, and the model records which
_UNUSED = (
    (r"^embeddings\.mask_token$", "DINOv2's mask token (masked-image training only)"),
    (r"position_ids$", "position id buffers"),
    (r"^(text_model|text_projection|logit_scale|logit_bias)", "the text tower"),
)


def is_hf_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(
        k.endswith(("embeddings.patch_embeddings.projection.weight", "patch_embedding.weight"))
        for k in state
    )


def hf_to_timm(
    state: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename HF tensors to timm's; also returns notes on what was dropped and why."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    qkv_names: dict[tuple[int, str], list[str]] = {}
    dropped: dict[str, list[str]] = {}
    pooler = []
    for name, tensor in state.items():
        key = next((name[len(p) :] for p in _PREFIXES if name.startswith(p)), name)
        layer = _LAYER_KEY.match(key)
        reason = next((why for pattern, why in _UNUSED if re.search(pattern, key)), None)
        if reason:
            dropped.setdefault(reason, []).append(name)
        elif key == "embeddings.class_embedding":  # (D,) in CLIP, (1, 1, D) in timm
            out["cls_token"] = tensor.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":  # an nn.Embedding: (N, D)
            out["pos_embed"] = tensor.unsqueeze(0)
        elif key in _TOP:
            out[_TOP[key]] = tensor
        elif key.startswith("head.attention.in_proj_"):
            kind = key.rsplit("_", 1)[-1]  # weight / bias
            dim = tensor.shape[0] // 3
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = tensor[:dim], tensor[dim:]
        elif key.startswith("pooler."):
            pooler.append(name)
        elif layer and layer.group(2) in _QKV:
            slot = (int(layer.group(1)), layer.group(3))
            qkv.setdefault(slot, {})[_QKV[layer.group(2)]] = tensor
            qkv_names.setdefault(slot, []).append(name)
        elif layer and layer.group(3) == "lambda1" and layer.group(2) in _LAYER_SCALE:
            out[f"blocks.{layer.group(1)}.{_LAYER_SCALE[layer.group(2)]}"] = tensor
        elif layer and layer.group(2) in _LAYER:
            i, module, kind = layer.groups()
            out[f"blocks.{i}.{_LAYER[module]}.{kind}"] = tensor
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
    notes = [f"dropped {why}: {len(names)} tensor(s)" for why, names in dropped.items()]
    return out, notes


def family_of(hf: Mapping, source: str) -> str:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{source}: expected a Hugging Face model_type in {sorted(FAMILIES)}, got "
            f"{model_type!r}"
        )
    return FAMILIES[model_type]


def vision_config(hf: Mapping) -> Mapping:
    """The vision tower's settings of a two-tower config (CLIP, SigLIP), else the config."""
    return hf.get("vision_config") or hf if hf.get("model_type") in ("clip", "siglip") else hf


def hf_config(
    hf: Mapping, state: Mapping[str, torch.Tensor], source: str, processor: Mapping | None = None
) -> tuple[ViTConfig, int]:
    """Our config at the checkpoint's resolution, and the resolution its processor feeds
    (DINOv2 runs at 224 px from 518 px positions, resampled as transformers does)."""
    family = family_of(hf, source)
    vision = vision_config(hf)
    architecture = ",".join(hf.get("architectures") or []) or str(hf.get("model_type"))
    if vision.get("use_swiglu_ffn"):
        raise UnsupportedArchitectureError("SwiGLU MLP", f"Hugging Face {architecture}", source)
    head = state.get("head.weight")
    if family == "dinov2" and head is not None and head.shape[1] != state["cls_token"].shape[-1]:
        raise UnsupportedArchitectureError(
            "a classifier on [class token, mean of patch tokens]",
            f"Hugging Face {architecture}",
            source,
        )
    if family == "siglip" and "attn_pool.latent" not in state:
        raise UnsupportedArchitectureError(
            "a SigLIP tower without its attention-pool head (vision_use_head=False)",
            f"Hugging Face {architecture}",
            source,
        )
    act = vision.get("hidden_act", DEFAULT_ACT[family])
    if act not in HF_ACTIVATIONS:
        raise CheckpointError(
            f"{source}: hidden_act: expected one of {sorted(HF_ACTIVATIONS)}, got {act!r}"
        )
    fields = tensor_layout(state, source)
    if family == "dinov2" and "mlp_ratio" in vision:
        fields["mlp_ratio"] = float(vision["mlp_ratio"])
    elif "intermediate_size" in vision:
        dim = fields["embed_dim"]
        fields["mlp_ratio"] = mlp_ratio(int(vision["intermediate_size"]), dim)
    if family == "deit" and fields["distilled"] and "head_dist.weight" not in state:
        fields["dist_head"] = head is None  # DeiTForImageClassification: the class token only
    labels = _labels(hf, fields["num_classes"])
    try:
        cfg = ViTConfig(
            **fields,
            num_heads=int(vision.get("num_attention_heads", 12)),
            act_layer=HF_ACTIVATIONS[act],
            norm_eps=float(vision.get("layer_norm_eps", DEFAULT_EPS[family])),
            labels=labels,
        )
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{source}: config.json describes no valid ViT: {exc}") from exc
    pre = hf_preprocess(family, cfg.img_size, processor, source)
    return cfg.replace(preprocess=dataclasses.replace(pre, img_size=cfg.img_size)), pre.img_size


def _labels(hf: Mapping, num_classes: int) -> tuple[str, ...]:
    id2label = hf.get("id2label") or {}
    labels = tuple(id2label[k] for k in sorted(id2label, key=int))
    if len(labels) != num_classes or all(n == f"LABEL_{i}" for i, n in enumerate(labels)):
        return ()  # HF writes LABEL_0.. placeholders when there are no real names
    return labels


def _square(value, name: str, source: str) -> int:
    if isinstance(value, Mapping):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        value = [value.get("height"), value.get("width")]
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1] or value[0] is None:
            raise CheckpointError(f"{source}: {name}: expected a square size, got {value}")
        value = value[0]
    return int(value)


def hf_preprocess(family: str, img_size: int, processor: Mapping | None, source: str) -> Preprocess:
    """The processor's resize, crop, resample and mean/std (the family's defaults where the
    folder has no preprocessor_config.json)."""
    crop_pct, squash, resample, mean, std = DEFAULT_PROCESSORS[family]
    resize = crop = None
    if processor:
        size = processor.get("size")
        squash = not (isinstance(size, Mapping) and "shortest_edge" in size)
        resize = _square(size, "size", source) if size is not None else None
        crop = (
            _square(processor["crop_size"], "crop_size", source)
            if processor.get("do_center_crop", "crop_size" in processor)
            and processor.get("crop_size") is not None
            else None
        )
        resample = processor.get("resample", resample)
        if processor.get("do_normalize", True):
            mean = processor.get("image_mean", mean)
            std = processor.get("image_std", std)
        else:
            mean, std = (0.0,) * 3, (1.0,) * 3
    if crop is None and resize is None:
        crop, resize = img_size, img_size / crop_pct
    crop = crop or resize
    resize = resize or crop
    interpolation = PIL_RESAMPLE.get(resample)
    if interpolation is None:
        raise CheckpointError(
            f"{source}: preprocessor resample={resample}: expected one of "
            f"{sorted(PIL_RESAMPLE)} (nearest, bilinear, bicubic)"
        )
    try:
        return Preprocess(
            img_size=crop,
            crop_pct=crop / resize,
            interpolation=interpolation,
            mean=mean,
            std=std,
            crop_mode="squash" if squash else "center",
        )
    except ConfigError as exc:
        raise CheckpointError(f"{source}: preprocessor_config.json: {exc}") from exc
