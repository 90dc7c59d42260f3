"""See what the ViT sees: arrays for attention, rollout and position embeddings.

Every function here returns numpy arrays, so a notebook can plot them its own
way; ``vit_deploy.inspect.plots`` draws the figures ``vit-inspect`` writes.

Attention probabilities always come from the reference (math) path
(``VisionTransformer.attention_maps``): the fused kernels never form the
N x N attention matrix, by design, so there is nothing to read out of them.

Token rows: with a class token, row 0 is CLS and patch (r, c) is row
``1 + r * G + c``; without one, patch (r, c) is row ``r * G + c``.
"""

from __future__ import annotations

import numpy as np
import torch

from vit_deploy.errors import ConfigError, InputShapeError
from vit_deploy.labels import class_names
from vit_deploy.labels import top_k as top_k_rows
from vit_deploy.model.vit import VisionTransformer
from vit_deploy.preprocess import ImageLike, preprocess_one


def as_pixels(model: VisionTransformer, image: ImageLike) -> torch.Tensor:
    """One image (path, PIL, uint8 array or preprocessed tensor) -> (1, 3, S, S) pixels."""
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        if image.shape[0] != 1:
            raise InputShapeError(
                f"expected one image (batch of 1), got a batch of {image.shape[0]}"
            )
        return image.detach().float().cpu()
    return torch.from_numpy(preprocess_one(image, model.config.preprocess))[None]


def denormalize(model: VisionTransformer, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Preprocessed (1, 3, S, S) or (3, S, S) pixels -> (S, S, 3) RGB in [0, 1] for display."""
    pre = model.config.preprocess
    x = pixels.detach().cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    x = x.reshape(x.shape[-3:]).transpose(1, 2, 0).astype(np.float64)
    x = x * np.asarray(pre.std) + np.asarray(pre.mean)
    return np.clip(x, 0.0, 1.0)


def _patch_offset(model: VisionTransformer) -> int:
    # patches follow the class, distillation and register tokens
    return model.config.num_prefix_tokens


def attention_probs(model: VisionTransformer, pixels: ImageLike) -> np.ndarray:
    """(layers, heads, N, N) attention probabilities for one image, from the math path."""
    maps = model.attention_maps(as_pixels(model, pixels))
    return torch.stack([m[0] for m in maps]).double().numpy()


def pos_embed_similarity(model: VisionTransformer) -> np.ndarray:
    """(G*G, G, G): for each patch position, the cosine similarity of its position
    embedding with every patch position's, laid out on the patch grid (CLS excluded)."""
    g = model.config.grid_size
    pos = model.pos_embed.detach()[0, _patch_offset(model) :].double()
    unit = pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (unit @ unit.T).numpy().reshape(g * g, g, g)


def check_layer(model: VisionTransformer, layer: int) -> int:
    depth = model.config.depth
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < depth:
        raise ConfigError(f"layer: expected 0..{depth - 1}, got {layer}")
    return int(layer)


def check_heads(model: VisionTransformer, heads) -> list[int]:
    """None means every head."""
    n = model.config.num_heads
    if heads is None:
        return list(range(n))
    heads = [heads] if isinstance(heads, (int, np.integer)) else list(heads)
    if not heads:
        raise ConfigError(f"heads: expected at least one of 0..{n - 1}, got none")
    bad = [h for h in heads if not isinstance(h, (int, np.integer)) or not 0 <= h < n]
    if bad:
        raise ConfigError(f"heads: expected indices in 0..{n - 1}, got {bad}")
    return [int(h) for h in heads]


def query_row(model: VisionTransformer, query: str | int) -> int:
    """'cls' or a token row -> the row of the attention matrix to read."""
    cfg = model.config
    if isinstance(query, str) and query.lower() == "cls":
        if not cfg.class_token:
            raise ConfigError(
                "query: this model has no class token, so there is no CLS row; "
                f"pass a token row in 0..{cfg.seq_len - 1} (patch (r, c) is row r * "
                f"{cfg.grid_size} + c)"
            )
        return 0
    if isinstance(query, str):
        try:
            query = int(query)
        except ValueError:
            raise ConfigError(f"query: expected 'cls' or a token row, got {query!r}") from None
    if not isinstance(query, (int, np.integer)) or not 0 <= query < cfg.seq_len:
        raise ConfigError(f"query: expected a token row in 0..{cfg.seq_len - 1}, got {query}")
    return int(query)


def attention_to_patches(
    model: VisionTransformer,
    pixels: ImageLike,
    layer: int,
    heads=None,
    query: str | int = "cls",
    probs: np.ndarray | None = None,
) -> np.ndarray:
    """(len(heads), G, G): in ``layer``, each head's attention from the query token
    (CLS or a token row) to every patch. Attention to CLS itself is left out, so
    with a class token the maps sum to 1 minus the attention CLS gets.

    ``probs``: the output of ``attention_probs`` for this image, to reuse it."""
    layer = check_layer(model, layer)
    heads = check_heads(model, heads)
    row = query_row(model, query)
    probs = attention_probs(model, pixels) if probs is None else probs
    g = model.config.grid_size
    return probs[layer, heads, row, _patch_offset(model) :].reshape(len(heads), g, g)


def rollout_matrix(probs: np.ndarray) -> np.ndarray:
    """(N, N) attention rollout (Abnar & Zuidema, 2020) of (layers, heads, N, N) probs:
    per layer average the heads, add the identity (the residual path), renormalise
    rows, then multiply through the layers, later layers on the left."""
    n = probs.shape[-1]
    rollout = np.eye(n)
    for layer_probs in probs:
        a = layer_probs.mean(axis=0) + np.eye(n)
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def attention_rollout(
    model: VisionTransformer, pixels: ImageLike, probs: np.ndarray | None = None
) -> np.ndarray:
    """(G, G): how much each patch flows into CLS through all layers, by rollout.

    Without a class token there is no single output token; the rollout rows of the
    patch tokens are averaged instead (what mean pooling and SigLIP's MAP head read)."""
    probs = attention_probs(model, pixels) if probs is None else probs
    rollout = rollout_matrix(probs)
    off = _patch_offset(model)
    row = rollout[0] if model.config.class_token else rollout[off:].mean(axis=0)
    g = model.config.grid_size
    return row[off:].reshape(g, g)


def label_names(model: VisionTransformer) -> tuple[list[str], str | None]:
    """(a name per class, a note for the user or None); ImageNet-1k names for an unlabeled
    1000-class head (``vit_deploy.labels.class_names``)."""
    names, note = class_names(model.config, imagenet_fallback=True)
    return list(names), note


@torch.no_grad()
def top_k(model: VisionTransformer, pixels: ImageLike, k: int = 5) -> list[tuple[str, float]]:
    """The k most probable classes as (label, probability), most probable first."""
    if not model.config.num_classes:
        raise ConfigError("top_k: this model has no classification head (num_classes=0)")
    if k < 1:
        raise ConfigError(f"k: expected a positive int, got {k}")
    logits = model(as_pixels(model, pixels)).float().numpy()
    names, _ = label_names(model)
    return top_k_rows(logits, names, k)[0]
