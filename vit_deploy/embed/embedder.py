"""The embedding engine's Python API: images in, L2-normalised embeddings (or top-k labels) out.

>>> emb = Embedder.from_artifact("artifacts/default-fp32")     # ONNX Runtime
>>> vectors = emb.embed(["a.png", "b.jpg"])                     # (2, D) float32, unit norm
>>> emb.classify("a.png", top_k=3)                              # [[("7", 0.98), ...]]

Every input goes through the artifact's own preprocessing (``manifest["preprocess"]``),
the same code on every backend. One ``Embedder`` may be shared by threads: ONNX Runtime
sessions are thread-safe; backends whose ``thread_safe`` is False are called under a lock. Nothing here imports
torch unless a PyTorch model or tensor is involved.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from vit_deploy.config import Preprocess
from vit_deploy.errors import ArtifactError, ConfigError, InputShapeError, NoClassifierError
from vit_deploy.labels import manifest_labels
from vit_deploy.labels import top_k as top_k_rows
from vit_deploy.manifest import check_outputs
from vit_deploy.preprocess import is_tensor, preprocess_one

DEFAULT_BATCH_SIZE = 32
CACHE_ENV = "VIT_DEPLOY_CACHE"
# Part of the cache key: bump when the exported artifact for the same weights changes.
CACHE_KEY_VERSION = "embedder-cache/1"


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32, copy=False)


class Embedder:
    """A backend plus its preprocessing and labels.

    ``backend``: anything with the runtime interface (``.name``, ``.config``,
    ``.manifest``, ``.output_names``, ``__call__(pixels) -> {"embedding": ..., ...}``).
    ``labels``: names for ``classify`` when the model has none of its own.
    """

    def __init__(self, backend, *, labels: Iterable[str] | None = None):
        self.backend = backend
        self.config = backend.config
        manifest = getattr(backend, "manifest", None) or {}
        pre = manifest.get("preprocess")
        self.preprocess = Preprocess.from_dict(pre) if pre else self.config.preprocess
        if self.preprocess.img_size != self.config.img_size:
            raise ConfigError(
                f"preprocess.img_size ({self.preprocess.img_size}) does not match the model's "
                f"input size ({self.config.img_size})"
            )
        self.labels = tuple(labels) if labels is not None else _labels_of(manifest, self.config)
        if "embedding" not in backend.output_names:
            raise ArtifactError(
                f"expected an 'embedding' output, got outputs {list(backend.output_names)}; "
                "re-export with --outputs embedding (or both)"
            )
        # the backend says whether __call__ may run from several threads at once
        self._lock = None if getattr(backend, "thread_safe", False) else threading.Lock()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, backend: str = "auto", **kw) -> Embedder:
        """An exported artifact directory; ``kw`` go to the backend (``providers``, ``threads``)."""
        from vit_deploy.runtime import load_backend

        labels = kw.pop("labels", None)
        return cls(load_backend(Path(path), backend=backend, **kw), labels=labels)

    @classmethod
    def from_model(
        cls,
        model,
        *,
        cache_dir: str | os.PathLike | None = None,
        backend: str = "auto",
        labels: Iterable[str] | None = None,
        export_options=None,
        **kw,
    ) -> Embedder:
        """A ``VisionTransformer``, checkpoint path or preset name (random weights).

        ``backend="torch"`` runs the model eagerly. Otherwise it is exported to ONNX once
        (``export_options``: an ``OnnxExportOptions``; default fp32, verified), into
        ``cache_dir/<hash of config, weights and options>/`` (default ``$VIT_DEPLOY_CACHE``
        or ``~/.cache/vit_deploy/embedder``); later calls with the same weights reuse it.
        """
        model = _as_model(model)
        if backend == "torch":
            from vit_deploy.runtime import load_backend

            return cls(load_backend(model, backend="torch"), labels=labels)
        directory = cached_export(model, cache_dir, export_options)
        return cls.from_artifact(directory, backend=backend, labels=labels, **kw)

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and preprocessing: what a resumed run must share."""
        manifest = getattr(self.backend, "manifest", None)
        if manifest:
            files = manifest["artifact"]
            ident = {"sha256": files.get("sha256"), "file": files.get("file")}
        else:
            ident = {"weights": weights_hash(self.backend.model)}
        ident["preprocess"] = self.preprocess.to_dict()
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]

    # ------------------------------------------------------------------ inference

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the backend for a preprocessed (B, 3, S, S) float32 batch."""
        if self._lock is None:
            return check_outputs(self.backend(pixels), len(pixels), self.config)
        with self._lock:
            return check_outputs(self.backend(pixels), len(pixels), self.config)

    def embed_pixels(self, pixels: np.ndarray, normalize: bool = True) -> np.ndarray:
        """(B, D) float32 embeddings of a preprocessed batch."""
        emb = np.asarray(self.run(pixels)["embedding"], dtype=np.float32)
        return l2_normalize(emb) if normalize else emb

    def embed(
        self, images, batch_size: int = DEFAULT_BATCH_SIZE, normalize: bool = True
    ) -> np.ndarray:
        """(n, D) float32 embeddings, unit L2 norm unless ``normalize=False``.

        ``images``: one image or a list (any iterable) of file paths, PIL images, HWC
        uint8 arrays, CHW uint8 tensors, or preprocessed (3, S, S) float tensors; a 4-D
        float array or tensor is taken as a preprocessed batch.
        """
        out = [self.embed_pixels(px, normalize) for px in self._pixel_batches(images, batch_size)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)

    def classify(
        self, images, top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[list[tuple[str, float]]]:
        """Per image, the ``top_k`` (label, probability) pairs, most probable first."""
        self._check_classifier()
        results = []
        for pixels in self._pixel_batches(images, batch_size):
            results += top_k_rows(self.run(pixels)["logits"], self.labels, top_k)
        return results

    # ------------------------------------------------------------------ helpers

    def _check_classifier(self) -> None:
        if not self.config.num_classes or "logits" not in self.backend.output_names:
            raise NoClassifierError(
                f"classify() needs a classification head: expected a 'logits' output, got "
                f"outputs {list(self.backend.output_names)} (num_classes="
                f"{self.config.num_classes}); use embed() for embeddings"
            )
        if len(self.labels) != self.config.num_classes:
            raise NoClassifierError(
                f"classify() needs {self.config.num_classes} label names, got "
                f"{len(self.labels)}; pass labels=[...] to the Embedder"
            )

    def _pixel_batches(self, images, batch_size: int) -> Iterator[np.ndarray]:
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive int, got {batch_size}")
        batch = _as_pixel_batch(images, self.preprocess)
        if batch is not None:
            for start in range(0, len(batch), batch_size):
                yield batch[start : start + batch_size]
            return
        items = iter(_as_items(images))
        while chunk := list(itertools.islice(items, batch_size)):
            yield np.stack([preprocess_one(im, self.preprocess) for im in chunk])

    def __repr__(self) -> str:
        return f"Embedder(backend={self.name!r}, dim={self.dim}, img_size={self.config.img_size})"


# ---------------------------------------------------------------------- inputs


def _as_items(images) -> Iterable:
    """One image -> [image]; a list or any other iterable of images -> itself."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) or is_tensor(images):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Iterable):
        return images
    return [images]  # preprocess_one says what it expected


def _as_pixel_batch(images, pre: Preprocess) -> np.ndarray | None:
    """A 4-D float array/tensor as a checked (B, 3, S, S) float32 batch; None otherwise."""
    if not (isinstance(images, np.ndarray) or is_tensor(images)) or images.ndim != 4:
        return None
    if is_tensor(images):
        if not images.is_floating_point():
            return None
        images = images.detach().cpu().float().numpy()
    elif not np.issubdtype(images.dtype, np.floating):
        return None
    expected = (3, pre.img_size, pre.img_size)
    if tuple(images.shape[1:]) != expected:
        raise InputShapeError(
            f"a preprocessed batch must have shape (B, {', '.join(map(str, expected))}), got "
            f"{tuple(images.shape)}; pass file paths, PIL images or uint8 arrays to have them resized"
        )
    return np.ascontiguousarray(images, dtype=np.float32)


def _labels_of(manifest: dict, config) -> tuple[str, ...]:
    """Real names only (the manifest's, else the config's): classify refuses without them
    rather than print "class N"."""
    return manifest_labels(manifest) or tuple(config.labels)


# ---------------------------------------------------------------------- export cache


def _as_model(model):
    """``Embedder.from_model``'s argument through the one model resolver."""
    from vit_deploy.checkpoints.spec import ModelSpec, as_model

    if isinstance(model, (str, os.PathLike)):
        spec = ModelSpec.parse(model)
        if spec.warning:
            warnings.warn(spec.warning, stacklevel=3)
        return spec.load()
    return as_model(model)


def weights_hash(model) -> str:
    """The export-cache key of the weights: their sha256, salted with the cache version."""
    from vit_deploy.checkpoints.spec import weights_sha256

    return hashlib.sha256(f"{CACHE_KEY_VERSION}|{weights_sha256(model)}".encode()).hexdigest()


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vit_deploy" / "embedder"


def cached_export(model, cache_dir: str | os.PathLike | None = None, options=None) -> Path:
    """The ONNX artifact of ``model`` under ``cache_dir``, exported (and verified) on first use.

    Keyed by the weights, config and export options. The exporter stages into a temp
    directory and renames it into place, so a crash never leaves half an artifact there.
    """
    from vit_deploy.export.onnx.pipeline import export_onnx_artifact
    from vit_deploy.export.options import OnnxExportOptions

    options = options or OnnxExportOptions()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{weights_hash(model)}|{options!r}".encode()).hexdigest()[:24]
    target = cache_dir / key
    if (target / "manifest.json").is_file():
        return target
    # another process exporting the same entry: wait for it, then use its artifact
    with _cache_entry_lock(target):
        if not (target / "manifest.json").is_file():
            export_onnx_artifact(model, target, options, source="Embedder.from_model")
    return target


def _cache_entry_lock(target: Path):
    import logging

    from vit_deploy.errors import OutputLockedError
    from vit_deploy.storage import acquire_lock

    entry = target.with_name(
        target.name + ".export"
    )  # not target's own lock: the export takes that
    try:
        return acquire_lock(entry, what="cache entry")
    except OutputLockedError as exc:
        logging.getLogger(__name__).info("waiting for the export cache: %s", exc)
        return acquire_lock(entry, wait=None, what="cache entry")
