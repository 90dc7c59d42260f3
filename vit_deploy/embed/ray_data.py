"""Embedding on Ray Data: one ``Embedder`` per actor, our preprocessing, errors as rows.

    import ray
    from vit_deploy.embed.ray_data import embed_dataset

    ds = ray.data.read_binary_files("/shared/images", include_paths=True)  # bytes + path
    out = embed_dataset(ds, "artifacts/default-fp32", actors=4)
    out.write_parquet("/shared/embeddings")  # path, bytes, embedding, error

``EmbedBatch`` is the callable class given to ``Dataset.map_batches``: Ray builds it once
per actor, so the artifact is loaded once per actor, not per batch. Each batch's images
(a ``bytes`` column of encoded files, or a ``path`` column) are decoded and preprocessed
by ``vit_deploy.preprocess`` (the artifact's own resize, crop and normalisation; Ray's
image readers resize differently, so they are not used), then embedded in one call.

Nothing is dropped: an image that cannot be decoded stays a row, with a null
``embedding`` and the reason in ``error`` (null on every good row), so
``rows in == rows out`` and ``out.filter(expr="error is not null")`` lists the failures.

Actors: CPU actors (ONNX Runtime, OpenVINO) take ``actor_threads`` CPUs each; TensorRT
actors (``backend="trt"``) take one GPU each (``num_gpus=1``). Ray Data's own defaults
restart an actor that dies and rerun its unfinished batch (``max_restarts`` and
``max_task_retries`` of -1 for actor pools); a batch's rows are emitted when the batch
is done, so a retry does not duplicate rows (``tests/test_ray.py`` kills an actor).

Importing this module does not import Ray; ``embed_dataset`` does.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vit_deploy.embed.embedder import Embedder
from vit_deploy.embed.pipeline import DEFAULT_BATCH_SIZE, MAX_REASON, _decode
from vit_deploy.errors import ConfigError
from vit_deploy.preprocess import DecodeOptions, load_image, preprocess_pil

IMAGE_COLUMNS = ("bytes", "path")  # the image column, in order of preference
EMBEDDING, ERROR = "embedding", "error"
GPU_BACKENDS = ("trt",)


class EmbedBatch:
    """``map_batches`` callable: pyarrow batch in, the same columns plus ``embedding``
    (fixed_size_list<float32>[D], null where the image failed) and ``error`` out.

    ``column``: the image column (``bytes``: encoded files; ``path``: file paths the
    actor can read); default the first of ``IMAGE_COLUMNS`` present. ``size_column``: for
    path inputs, a column with each file's size at discovery (vit-embed passes it, so an
    empty file is named as such); ``fmt``: the output format the reasons are checked for
    (a line break in a path cannot go into ``.npy``'s ``.paths.txt``); ``decode``: EXIF
    orientation and pixel limit, as vit-embed's ``--exif-transpose``/``--max-pixels``.
    """

    def __init__(
        self,
        artifact: str | os.PathLike,
        *,
        backend: str = "auto",
        backend_kw: dict | None = None,
        normalize: bool = True,
        column: str | None = None,
        size_column: str | None = None,
        fmt: str = "parquet",
        decode: DecodeOptions | None = None,
    ):
        self.embedder = Embedder.from_artifact(artifact, backend=backend, **(backend_kw or {}))
        self.normalize, self.column, self.size_column = normalize, column, size_column
        self.fmt, self.decode_options = fmt, decode or DecodeOptions()

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = self.column or _image_column(batch.column_names)
        images = batch.column(column).to_pylist()
        sizes = batch.column(self.size_column).to_pylist() if self.size_column else None
        decoded = [
            self.decode(x, None if sizes is None else sizes[i]) for i, x in enumerate(images)
        ]
        ok = np.array([not isinstance(d, str) for d in decoded], dtype=bool)
        dim = self.embedder.dim
        emb = np.zeros((len(decoded), dim), np.float32)
        if ok.any():
            pixels = np.stack([d for d in decoded if not isinstance(d, str)])
            emb[ok] = self.embedder.embed_pixels(pixels, normalize=self.normalize)
        flat = pa.array(emb.reshape(-1), pa.float32())
        embedding = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~ok))
        error = pa.array([d if isinstance(d, str) else None for d in decoded], pa.string())
        out = batch.drop_columns([c for c in (EMBEDDING, ERROR) if c in batch.column_names])
        return out.append_column(EMBEDDING, embedding).append_column(ERROR, error)

    def decode(self, image, size: int | None) -> np.ndarray | str:
        """Preprocessed pixels, or the reason why this image gives none (as vit-embed says it)."""
        pre = self.embedder.preprocess
        if isinstance(image, (bytes, bytearray, memoryview)):
            return _decode_bytes(bytes(image), pre, self.decode_options)
        if image is None:
            return "no image (null in the input column)"
        if size is None:
            size = _size(image)
        return _decode(image, size, pre, self.fmt, self.decode_options)


def _image_column(names: list[str]) -> str:
    for name in IMAGE_COLUMNS:
        if name in names:
            return name
    raise ConfigError(
        f"expected an image column {' or '.join(map(repr, IMAGE_COLUMNS))}, got columns {names}; "
        "pass column=..."
    )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1  # let the decoder say why (no such file, a folder, ...)


def _decode_bytes(data: bytes, pre, decode: DecodeOptions) -> np.ndarray | str:
    """An encoded file's bytes -> pixels, through the same loader as a file on disk."""
    if not data:
        return "empty file (0 bytes)"
    try:
        return preprocess_pil(load_image(io.BytesIO(data), decode), pre)
    except Exception as exc:  # every decoder failure is an error row
        text = " ".join(str(exc).split()) or "no message"
        return f"{type(exc).__name__}: {text}"[:MAX_REASON]


@dataclass(frozen=True)
class ActorOptions:
    """How many actors, and what each one holds."""

    actors: int = 1
    actor_threads: int | None = None  # CPUs per actor (and ONNX Runtime threads)
    num_gpus: float | None = None  # default: 1 for GPU backends (trt), else 0

    def __post_init__(self):
        if self.actors < 1:
            raise ConfigError(f"actors: expected >= 1, got {self.actors}")
        if self.actor_threads is not None and self.actor_threads < 1:
            raise ConfigError(f"actor_threads: expected >= 1, got {self.actor_threads}")

    def gpus(self, backend: str) -> float:
        return self.num_gpus if self.num_gpus is not None else float(backend in GPU_BACKENDS)

    def backend_kw(self, backend: str) -> dict:
        # intra-op threads are a CPU-runtime setting; TensorRT takes none
        if self.actor_threads and backend not in GPU_BACKENDS:
            return {"threads": self.actor_threads}
        return {}


def embed_dataset(
    ds,
    artifact: str | os.PathLike,
    *,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    normalize: bool = True,
    column: str | None = None,
    actors: int = 1,
    actor_threads: int | None = None,
    num_gpus: float | None = None,
    decode: DecodeOptions | None = None,
    batch_fn: type[EmbedBatch] = EmbedBatch,
    **batch_kw,
):
    """``ds`` with ``embedding`` and ``error`` columns added (lazy: a Ray Dataset).

    ``actors`` actors each load ``artifact`` once (``backend``: any runtime backend;
    ``trt`` actors get ``num_gpus=1`` unless ``num_gpus`` says otherwise) and embed
    ``batch_size`` images per call. ``decode``: EXIF orientation and pixel limit
    (``DecodeOptions``). ``batch_fn``: the callable class (a subclass of ``EmbedBatch``);
    ``batch_kw``: more of its constructor's keywords.

    Leave CPUs for the read tasks: on a two-CPU machine, two one-CPU actors take both and
    a ``read_binary_files`` source waits for ever.
    """
    return map_embed(
        ds,
        artifact,
        ActorOptions(actors, actor_threads, num_gpus),
        backend=backend,
        batch_size=batch_size,
        batch_fn=batch_fn,
        normalize=normalize,
        column=column,
        decode=decode,
        **batch_kw,
    )


def map_embed(ds, artifact, options: ActorOptions, *, backend, batch_size, batch_fn, **batch_kw):
    """The ``map_batches`` call itself (shared by ``embed_dataset`` and vit-embed --ray)."""
    import ray.data

    if batch_size < 1:
        raise ConfigError(f"batch_size: expected >= 1, got {batch_size}")
    return ds.map_batches(
        batch_fn,
        fn_constructor_args=(os.fspath(artifact),),
        fn_constructor_kwargs={
            "backend": backend,
            "backend_kw": options.backend_kw(backend),
            **batch_kw,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.actor_threads or 1,
        num_gpus=options.gpus(backend),
    )


__all__ = ["ActorOptions", "EmbedBatch", "embed_dataset", "map_embed"]
