"""The checkpoint's own library as a reference: timm, transformers or open_clip.

Our-model-vs-artifact parity cannot catch a loader error (wrong heads, activation, norm
placement): both sides share it. So the export gate also runs the source library's own
model, built from the same checkpoint file, on the parity inputs. ``source_reference``
returns a function pixels -> {output name: array} for the outputs the source defines
with the same meaning as ours (see the README's family table), or a reason it cannot.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

Reference = Callable[[np.ndarray], dict[str, np.ndarray]]


def source_reference(model) -> tuple[Reference | None, str]:
    """(reference, description) or (None, why there is none)."""
    info = getattr(model, "checkpoint_info", None) or {}
    library = info.get("library")
    if library in (None, "vit_deploy", "big_vision"):
        return None, f"no source library for a {info.get('layout') or 'model built in Python'}"
    if importlib.util.find_spec(library) is None:
        return None, f"{library} is not installed (pip install {library.replace('_', '-')})"
    build = {"timm": _timm, "transformers": _transformers, "open_clip": _open_clip}[library]
    return build(model, info)


def _weights(info: dict) -> dict[str, torch.Tensor]:
    from vit_deploy.checkpoints.load import _read_tensors

    return _read_tensors(Path(info["weights"]))


def _run(module: torch.nn.Module, outputs: Callable, pixels: np.ndarray, batch: int = 16):
    results: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            got = outputs(module, torch.from_numpy(pixels[start : start + batch]))
            for name, value in got.items():
                results.setdefault(name, []).append(value.float().numpy())
    return {name: np.concatenate(parts) for name, parts in results.items()}


# ---------------------------------------------------------------- timm


def _timm(model, info: dict) -> tuple[Reference | None, str]:
    import timm

    cfg = model.config
    state = _weights(info)
    architecture = info.get("config_name") or info.get("architecture") or ""
    if architecture and architecture in timm.list_models():
        args = dict(info.get("model_args") or {})
        args.update(img_size=cfg.img_size, num_classes=_timm_classes(cfg, state))
        if cfg.reg_tokens:
            args["reg_tokens"] = cfg.reg_tokens
        net = timm.create_model(architecture, pretrained=False, **args)
        described = f"timm.create_model({architecture!r}) + timm's checkpoint filter"
    elif cfg.use_patch_bias == cfg.pre_norm:
        return None, "timm ties the patch-embedding bias to pre_norm; this config does not"
    else:
        net = _timm_vit_from_config(cfg, state)
        described = "timm VisionTransformer built from the inferred config"
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    state = filter_fn(state, net) if filter_fn else state
    net.load_state_dict(state)
    net.eval()
    return partial(_run, net, partial(_timm_outputs, cfg)), described


def _timm_classes(cfg, state) -> int:
    head = state.get("head.weight")
    return 0 if head is None else head.shape[0]


def _timm_outputs(cfg, net, x):
    features = net.forward_features(x)
    out = {}
    if cfg.proj_dim:  # timm keeps CLIP's projection as its head
        out["embedding"] = net.forward_head(features)
        return out
    out["embedding"] = net.forward_head(features, pre_logits=True)
    if cfg.num_classes:
        out["logits"] = net.forward_head(features)
    return out


def _timm_vit_from_config(cfg, state):
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import Block, ResPostBlock, VisionTransformer

    kwargs = dict(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=_timm_classes(cfg, state),
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        class_token=cfg.class_token,
        global_pool=cfg.global_pool,
        fc_norm=cfg.fc_norm,
        reg_tokens=cfg.reg_tokens,
        no_embed_class=state["pos_embed"].shape[1] == cfg.num_patches and cfg.num_prefix_tokens,
        pre_norm=cfg.pre_norm,
        init_values=cfg.init_values,
        act_layer=cfg.act_layer,
        norm_layer=partial(torch.nn.LayerNorm, eps=cfg.norm_eps),
        block_fn=ResPostBlock if cfg.block_fn == "ResPostBlock" else Block,
    )
    if cfg.distilled:
        kwargs.pop("reg_tokens")
        return VisionTransformerDistilled(**kwargs)
    return VisionTransformer(**kwargs)


# ---------------------------------------------------------------- transformers


def _transformers(model, info: dict) -> tuple[Reference | None, str]:
    import transformers

    folder = Path(info["path"])
    folder = folder if folder.is_dir() else folder.parent
    if info.get("model_type") in ("clip", "siglip"):  # the whole model needs text inputs too
        return None, f"a two-tower {info['model_type']} folder: only its vision tower was loaded"
    name = (info.get("architecture") or "").split(",")[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        return None, f"transformers has no class {name!r} for this folder"
    net = cls.from_pretrained(str(folder)).eval()
    return partial(_run, net, partial(_hf_outputs, model.config, info)), f"{name}.from_pretrained"


# model types whose pooler_output is the family's embedding (see the README's table)
POOLED_EMBEDDINGS = ("dinov2", "dinov2_with_registers", "siglip_vision_model", "clip_vision_model")


def _hf_outputs(cfg, info, net, x):
    kwargs = {}
    if x.shape[-1] != _hf_image_size(net):
        kwargs["interpolate_pos_encoding"] = True
    out = net(pixel_values=x, **kwargs)
    got = {}
    if getattr(out, "logits", None) is not None and cfg.num_classes:
        got["logits"] = out.logits
    if getattr(out, "image_embeds", None) is not None:
        got["embedding"] = out.image_embeds
    elif info.get("model_type") in POOLED_EMBEDDINGS:
        got["embedding"] = out.pooler_output
    elif getattr(out, "last_hidden_state", None) is not None and not cfg.distilled:
        got["embedding"] = out.last_hidden_state[:, 0]  # ViTModel: the normed class token
    return got


def _hf_image_size(net) -> int:
    size = getattr(net.config, "vision_config", net.config).image_size
    return size if isinstance(size, int) else size[0]


# ---------------------------------------------------------------- open_clip


def _open_clip(model, info: dict) -> tuple[Reference | None, str]:
    import open_clip

    model_cfg = info.get("model_cfg")
    if not model_cfg:
        return None, "an open_clip state dict without open_clip_config.json"
    net = open_clip.CLIP(**model_cfg)
    state = _weights(info)
    if model.config.img_size != model_cfg.get("vision_cfg", {}).get("image_size"):
        return None, "open_clip builds its towers at the checkpoint's resolution only"
    net.load_state_dict(state)
    net.eval()
    return (
        partial(_run, net, lambda n, x: {"embedding": n.encode_image(x)}),
        "open_clip.CLIP(**model_cfg).encode_image",
    )
