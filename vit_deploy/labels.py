"""Class names and top-k predictions: one path for the Embedder, vit-serve and vit-inspect.

``class_names`` says which name each class has (the manifest's labels, else the config's,
else ImageNet-1k names for a 1000-class head when asked, else "class N"); ``top_k`` turns
logits into the k most probable (label, probability) pairs per row.
"""

from __future__ import annotations

import functools

import numpy as np

from vit_deploy.errors import ConfigError

NUM_IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...] | None:
    """ImageNet-1k class names in class order, from timm (None when timm is absent)."""
    try:
        from timm.data import ImageNetInfo  # timm is optional: imported only here
    except ImportError:
        return None
    info = ImageNetInfo("imagenet-1k")
    return tuple(info.index_to_description(i) for i in range(NUM_IMAGENET_CLASSES))


def manifest_labels(manifest: dict | None) -> tuple[str, ...]:
    labels = (manifest or {}).get("labels")
    if isinstance(labels, dict):
        labels = labels.get("names")
    if isinstance(labels, (list, tuple)) and labels:
        return tuple(str(x) for x in labels)
    return ()


def class_names(
    config, manifest: dict | None = None, *, imagenet_fallback: bool = False
) -> tuple[tuple[str, ...], str | None]:
    """(a name per class, a note for the user or None).

    Without names anywhere, a 1000-class head gets ImageNet-1k's when ``imagenet_fallback``
    (with a note saying that was assumed), any other head "class N"."""
    names = manifest_labels(manifest) or tuple(config.labels)
    if names:
        return names, None
    fallback = tuple(f"class {i}" for i in range(config.num_classes))
    if not imagenet_fallback or config.num_classes != NUM_IMAGENET_CLASSES:
        return fallback, None
    imagenet = imagenet_class_names()
    if imagenet is None:
        return fallback, "no labels in the config and timm is not installed: showing class indices"
    return imagenet, "no labels in the config: assuming ImageNet-1k class order (1000 classes)"


def top_k(logits, labels, k: int) -> list[list[tuple[str, float]]]:
    """Per row of (B, classes) logits, the k most probable (label, probability) pairs,
    most probable first (ties in class order). ``k`` is clipped to the class count."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != len(labels):
        raise ConfigError(
            f"expected (batch, {len(labels)}) logits for {len(labels)} labels, got shape "
            f"{logits.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"expected a positive int, got {k!r}", option="top_k")
    k = min(k, len(labels))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(labels[i], float(r[i])) for i in idx] for r, idx in zip(probs, top, strict=True)]


__all__ = [
    "NUM_IMAGENET_CLASSES",
    "class_names",
    "imagenet_class_names",
    "manifest_labels",
    "top_k",
]
