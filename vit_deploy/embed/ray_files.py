"""``vit-embed --ray``: the same files, work dir and outputs as the local run, with the
decoding and the model spread over Ray actors.

    discover (sorted) -> skip what the work dir already holds -> Ray Dataset of
    (index, path, size) in blocks of batch_size -> EmbedBatch actors (ray_data)
    -> rows streamed back in input order -> one chunk per chunk_rows rows, written
    atomically by this process in ``<out>.partial/`` -> ``workdir.merge`` -> ``<out>``

Everything but the map step is the local pipeline's own code (``OutputPlan``,
``discover``, ``WorkDir``, ``merge``), so the outputs, the errors file, the row order
and resume are the same, and a run interrupted locally can be resumed on Ray (or the
other way round). Paths must be readable by the actors: on a cluster, a shared file
system mounted at the same path on every node; the output is written where this
process runs.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from vit_deploy.embed.pipeline import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_ROWS,
    EmbedResult,
    OutputPlan,
    discover,
    work_meta,
)
from vit_deploy.embed.ray_data import ERROR, ActorOptions, EmbedBatch, map_embed
from vit_deploy.embed.workdir import WorkDir, merge
from vit_deploy.errors import BackendUnavailableError
from vit_deploy.preprocess import DecodeOptions
from vit_deploy.storage import remove_stale_temps


@dataclass(frozen=True)
class ArtifactInfo:
    """What the driver needs to know of the artifact, read where the actors run it."""

    name: str  # the backend's name
    dim: int
    fingerprint: str


@contextlib.contextmanager
def ray_session(address: str = "local", *, quiet: bool = False):
    """Ray, connected: ``local`` starts a one-machine cluster here, ``auto`` joins the
    cluster this machine belongs to, anything else is a head address (``HOST:6379`` or
    ``ray://HOST:10001``). A session already started by the caller is used as is."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--ray needs Ray Data: expected ray[data] installed (pip install "
            f"'vit-deploy[ray]'), got {exc}"
        ) from None
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=not quiet,
            logging_level="ERROR" if quiet else "INFO",
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise BackendUnavailableError(
            f"expected a reachable Ray cluster at {address!r}, got {type(exc).__name__}: {exc}"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def describe_artifact(artifact, backend: str, options: ActorOptions) -> ArtifactInfo:
    """Load the artifact once on a worker with the actors' resources (the driver may have
    no GPU, or not the backend's library) and report its name, width and fingerprint."""
    import ray

    def describe(artifact, backend, backend_kw):
        from vit_deploy.embed.embedder import Embedder

        emb = Embedder.from_artifact(artifact, backend=backend, **backend_kw)
        return ArtifactInfo(emb.name, emb.dim, emb.fingerprint)

    task = ray.remote(num_cpus=options.actor_threads or 1, num_gpus=options.gpus(backend))
    ref = task(describe).remote(os.fspath(artifact), backend, options.backend_kw(backend))
    return ray.get(ref)


def embed_files_ray(
    artifact,
    images,
    out: str | os.PathLike,
    *,
    address: str = "local",
    errors: str | os.PathLike | None = None,
    resume: bool = True,
    backend: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    normalize: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    actors: int = 1,
    actor_threads: int | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    batch_fn: type[EmbedBatch] = EmbedBatch,
    decode: DecodeOptions | None = None,
) -> tuple[EmbedResult, ArtifactInfo]:
    """``pipeline.embed_files`` with the model on ``actors`` Ray actors (see the module
    doc). ``on_chunk`` and ``batch_fn``: as in ``embed_files`` and ``embed_dataset``;
    ``decode``: EXIF orientation and pixel limit (``DecodeOptions``)."""
    options = ActorOptions(actors, actor_threads)
    plan = OutputPlan.for_output(out, errors)  # before any work: fail fast on a bad --out
    inputs = discover(images)
    with ray_session(address, quiet=not progress):
        info = describe_artifact(artifact, backend, options)
        meta = work_meta(info.fingerprint, info.dim, normalize)
        work = WorkDir.open(plan.work, meta, resume)  # the output's lock, held until finish
        try:
            for path in (plan.out, plan.errors, plan.paths):
                if path is not None:
                    remove_stale_temps(path)
            done = work.finished(inputs)
            todo = np.flatnonzero(~done)
            start = time.perf_counter()
            if len(todo):
                ds = _todo_dataset(inputs, todo, batch_size)
                embedded = map_embed(
                    ds, artifact, options, backend=backend, batch_size=batch_size,
                    batch_fn=batch_fn, normalize=normalize, column="path", size_column="size",
                    fmt=plan.fmt, decode=decode,
                )  # fmt: skip
                _write_chunks(
                    embedded, inputs, todo, work, chunk_rows, info.dim, progress, on_chunk
                )
            seconds = time.perf_counter() - start
            rows, failed = merge(work, inputs, plan, info.dim)
            work.finish()
        finally:
            work.close()
    result = EmbedResult(
        out=plan.out,
        errors_file=plan.errors,
        paths_file=plan.paths,
        inputs=len(inputs),
        rows=rows,
        failed=failed,
        reused=int(done.sum()),
        processed=len(todo),
        ignored=inputs.ignored,
        seconds=seconds,
    )
    return result, info


def _todo_dataset(inputs, todo: np.ndarray, batch_size: int):
    """(index, path, size) of the images left, one block per batch so that every actor
    gets work (a single block would go to a single actor)."""
    import ray.data

    sizes = inputs.stats[:, 0]
    blocks = [
        pa.table(
            {
                "index": pa.array(part, pa.int64()),
                "path": pa.array([inputs.paths[i] for i in part], pa.string()),
                "size": pa.array(sizes[part], pa.int64()),
            }
        )
        for part in np.array_split(todo, -(-len(todo) // batch_size))
    ]
    return ray.data.from_arrow(blocks)


def _write_chunks(embedded, inputs, todo, work, chunk_rows, dim, progress, on_chunk) -> None:
    """Stream the actors' rows into chunk files of ``chunk_rows`` rows each. A row Ray
    delivers twice (it should not) is written once; a missing one fails the merge."""
    seen = np.zeros(len(inputs), dtype=bool)
    written = 0
    bar = tqdm(total=len(todo), unit="img", desc="vit-embed --ray", disable=not progress)
    # rows in the order they went in: the chunks, hence the output, follow the sorted
    # inputs (set on this dataset's own context, not the process-wide one)
    embedded.context.execution_options.preserve_order = True
    embedded.context.enable_progress_bars = False  # ours below counts images, not blocks
    try:
        for batch in embedded.iter_batches(batch_size=chunk_rows, batch_format="pyarrow"):
            index = batch.column("index").to_numpy()
            first = np.zeros(len(index), dtype=bool)
            first[np.unique(index, return_index=True)[1]] = True
            fresh = first & ~seen[index]
            seen[index] = True
            entries = _entries(batch.filter(pa.array(fresh)), inputs, dim)
            if entries[0]:
                work.write_chunk(*entries)
                written += 1
                if on_chunk is not None:
                    on_chunk(written)
            bar.update(int(fresh.sum()))
    finally:
        bar.close()


def _entries(batch: pa.Table, inputs, dim: int):
    """A batch of actor rows as ``WorkDir.write_chunk``'s arguments."""
    index = batch.column("index").to_numpy()
    errors = batch.column(ERROR).to_pylist()
    ok = np.array([e is None for e in errors], dtype=bool)
    good = batch.column("embedding").combine_chunks().filter(pa.array(ok))
    emb = good.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    paths = [inputs.paths[i] for i in index]
    return paths, inputs.stats[index], ok.tolist(), [e or "" for e in errors], emb


__all__ = ["ArtifactInfo", "describe_artifact", "embed_files_ray", "ray_session"]
