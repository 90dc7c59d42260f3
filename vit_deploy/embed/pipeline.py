"""Streaming embedding of many image files, with resume: what ``vit-embed`` runs.

    discover -> decode workers (threads) -> bounded in-order prefetch -> model batches
             -> chunk files in ``<out>.partial/`` (each written atomically)
             -> merge into ``<out>`` (.npy + ``<out>.paths.txt``, or .parquet) atomically

Memory stays flat in the number of images: at most ``prefetch`` decoded images wait for
the model, at most one chunk of embeddings is held before it is written, and the merge
streams chunk by chunk. Only the list of input paths (a few hundred bytes each) grows.

Nothing is dropped silently: a file that cannot be decoded is recorded, with the reason,
in the errors file (JSON lines), and ``rows + failed == inputs`` is checked at the end.

Resume: a finished chunk records each path with the size and mtime it had; a rerun skips
paths whose chunk entry still matches the file on disk, embeds the rest, then merges.
The work directory and the merge live in ``workdir``, the output formats (and
``read_embeddings``) in ``writers``.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vit_deploy.embed.workdir import WORK_FORMAT, WorkDir, merge
from vit_deploy.embed.writers import OUTPUT_FORMATS, read_embeddings
from vit_deploy.errors import EmbedInputError, OutputPathError
from vit_deploy.preprocess import DEFAULT_MAX_PIXELS, DecodeOptions, preprocess_one
from vit_deploy.storage import remove_stale_temps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm"}
)
DEFAULT_BATCH_SIZE = 64
DEFAULT_CHUNK_ROWS = 1024
MAX_REASON = 300
NO_STAT = (-1, -1)


# ---------------------------------------------------------------------- plan and inputs


@dataclass(frozen=True)
class OutputPlan:
    """Where one run writes: the output, its sidecars and the work directory."""

    out: Path
    fmt: str
    errors: Path
    paths: Path | None  # .npy only: one path per line, row i <-> line i
    work: Path

    @classmethod
    def for_output(cls, out: str | os.PathLike, errors: str | os.PathLike | None = None):
        out = Path(out)
        fmt = OUTPUT_FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise OutputPathError(
                f"expected a file ending in {' or '.join(OUTPUT_FORMATS)}, got {str(out)!r}",
                option="out",
            )
        paths = out.with_name(out.name + ".paths.txt") if fmt == "npy" else None
        errors = Path(errors) if errors is not None else out.with_name(out.name + ".errors.jsonl")
        plan = cls(out, fmt, errors, paths, out.with_name(out.name + ".partial"))
        for path in (out, errors, paths):
            if path is not None:
                check_writable(path)
        return plan


def check_writable(path: Path) -> None:
    """Raise OutputPathError unless a file can be created beside ``path`` and renamed onto it."""
    if path.is_dir():
        raise OutputPathError(f"{path}: expected a file path to write, got a directory")
    parent = path.parent
    if not parent.is_dir():
        why = "not a directory" if parent.exists() else "no such directory"
        raise OutputPathError(f"{path}: expected an existing directory {str(parent)!r}, got {why}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot write in {str(parent)!r}: {exc.strerror}") from None


@dataclass
class Inputs:
    """The input paths (sorted, unique) and each one's (size, mtime_ns) at discovery."""

    paths: list[str]
    stats: np.ndarray  # (n, 2) int64; NO_STAT where stat failed
    ignored: int = 0  # files in a folder without an image extension

    def __len__(self) -> int:
        return len(self.paths)


def discover(images: str | os.PathLike | Sequence[str | os.PathLike]) -> Inputs:
    """A folder (recursive: files with an image extension), one file, a glob pattern (every
    match, folders included: they fail as inputs), or a list of paths."""
    if isinstance(images, Inputs):
        return images
    ignored = 0
    if isinstance(images, (str, os.PathLike)):
        text = os.fspath(images)
        if os.path.isdir(text):
            found, ignored = _walk(text)
        elif os.path.lexists(text):
            found = [text]
        elif glob.has_magic(text):
            found = glob.glob(text, recursive=True)
        else:
            raise EmbedInputError(
                f"--images: expected a folder, a file or a glob pattern, got {text!r} (no such path)"
            )
    else:
        found = [os.fspath(p) for p in images]
    paths = sorted(set(found))
    if not paths:
        what = repr(os.fspath(images)) if isinstance(images, (str, os.PathLike)) else "the list"
        extra = f" ({ignored} files without an image extension)" if ignored else ""
        raise EmbedInputError(
            f"no images found in {what}{extra}; expected files ending in "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    stats = np.array([_stat(p) for p in paths], dtype=np.int64).reshape(-1, 2)
    return Inputs(paths, stats, ignored)


def _walk(top: str) -> tuple[list[str], int]:
    found, ignored = [], 0
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(root, name))
            else:
                ignored += 1
    return found, ignored


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return NO_STAT
    return st.st_size, st.st_mtime_ns


# ---------------------------------------------------------------------- decoding


def _decode(
    path: str, size: int, pre, fmt: str, decode: DecodeOptions | None = None
) -> np.ndarray | str:
    """Preprocessed pixels, or the reason (one line) why this file gives none (an image over
    the pixel limit is one: it is refused from its header, before decoding)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename it"
    if fmt == "npy" and ("\n" in path or "\r" in path):
        return "file name contains a line break, which .paths.txt cannot list; use .parquet"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        return preprocess_one(path, pre, decode)
    except Exception as exc:  # every decoder failure is a row in the errors file
        text = " ".join(str(exc).split()) or "no message"
        return f"{type(exc).__name__}: {text}"[:MAX_REASON]


def prefetch(
    items: Sequence[tuple[str, int]],
    pre,
    fmt: str,
    workers: int,
    depth: int,
    decode: DecodeOptions | None = None,
) -> Iterator[tuple[int, np.ndarray | str]]:
    """(index, pixels or reason) in input order, decoded by ``workers`` threads with at
    most ``depth`` images in flight (decoded and waiting, or being decoded)."""
    if workers < 1:
        for i, (path, size) in enumerate(items):
            yield i, _decode(path, size, pre, fmt, decode)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vit-embed-decode")
    pending: collections.deque = collections.deque()
    try:
        upcoming = iter(enumerate(items))
        for i, (path, size) in upcoming:
            pending.append((i, pool.submit(_decode, path, size, pre, fmt, decode)))
            if len(pending) >= depth:
                break
        while pending:
            i, future = pending.popleft()
            nxt = next(upcoming, None)
            if nxt is not None:
                j, (path, size) = nxt
                pending.append((j, pool.submit(_decode, path, size, pre, fmt, decode)))
            yield i, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- the run


@dataclass
class EmbedResult:
    """What one run did. ``rows + failed == inputs`` always."""

    out: Path
    errors_file: Path
    paths_file: Path | None
    inputs: int
    rows: int
    failed: int
    reused: int  # inputs taken from an interrupted run's chunks
    processed: int  # inputs decoded (and embedded, unless they failed) by this run
    ignored: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None  # decode threads; None: one per core, at most 8; 0: inline
    normalize: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    progress: bool = True
    exif_transpose: bool = True  # turn images by their EXIF orientation tag
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # refuse (as a recorded failure) larger ones
    # called with n after this run's n-th chunk is on disk (tests raise from it to
    # simulate an interrupted run)
    on_chunk: Callable[[int], None] | None = None

    def __post_init__(self):
        for name in ("batch_size", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers: expected >= 0, got {self.workers}")

    @property
    def decode(self) -> DecodeOptions:
        return DecodeOptions(exif_transpose=self.exif_transpose, max_pixels=self.max_pixels)

    @property
    def decode_threads(self) -> int:
        return max(1, min(8, os.cpu_count() or 1)) if self.workers is None else self.workers


def embed_files(
    embedder,
    images,
    out: str | os.PathLike,
    *,
    errors: str | os.PathLike | None = None,
    resume: bool = True,
    **options,
) -> EmbedResult:
    """Embed every image under ``images`` into ``out`` (.npy or .parquet).

    ``options``: the fields of ``RunOptions`` (batch_size, workers, normalize, chunk_rows,
    progress, exif_transpose, max_pixels, on_chunk). ``resume``: reuse the chunks of an
    interrupted run of the same artifact and settings (else they are discarded).

    The output is locked for the whole run (``OutputLockedError`` names a live writer of
    the same ``out``); temp files a killed run left beside the outputs are removed.
    """
    opts = RunOptions(**options)
    plan = OutputPlan.for_output(out, errors)  # before any work: fail fast on a bad --out
    inputs = discover(images)
    meta = work_meta(embedder.fingerprint, embedder.dim, opts.normalize)
    work = WorkDir.open(plan.work, meta, resume)  # the output's lock, held until finish
    try:
        for path in (plan.out, plan.errors, plan.paths):
            if path is not None:
                remove_stale_temps(path)
        done = work.finished(inputs)
        todo = np.flatnonzero(~done)
        start = time.perf_counter()
        _embed_into_chunks(embedder, inputs, todo, work, plan.fmt, opts)
        seconds = time.perf_counter() - start
        rows, failed = merge(work, inputs, plan, embedder.dim)
        work.finish()
    finally:
        work.close()
    return EmbedResult(
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


def work_meta(fingerprint: str, dim: int, normalize: bool) -> dict:
    """What a resumed run must share with the one that wrote the work dir (local or --ray)."""
    return {
        "format": WORK_FORMAT,
        "fingerprint": fingerprint,
        "normalize": bool(normalize),
        "dim": int(dim),
    }


def _embed_into_chunks(embedder, inputs, todo, work, fmt: str, opts: RunOptions) -> None:
    """Decode ``todo`` (indices into inputs), embed in batches, write entries in chunks."""
    items = [(inputs.paths[i], int(inputs.stats[i][0])) for i in todo]
    # enough decoded images to fill the next batch while the model runs this one
    depth = 2 * opts.batch_size + 2 * opts.decode_threads
    chunk = _ChunkBuffer(embedder.dim)
    chunks_written = 0
    bar = tqdm(total=len(items), unit="img", desc="vit-embed", disable=not opts.progress)
    batch: list[tuple[int, np.ndarray]] = []

    def run_batch():
        emb = embedder.embed_pixels(np.stack([px for _, px in batch]), normalize=opts.normalize)
        for (i, _), row in zip(batch, emb, strict=True):
            chunk.add(inputs.paths[i], inputs.stats[i], row)
        bar.update(len(batch))
        batch.clear()

    def flush():
        nonlocal chunks_written
        work.write_chunk(*chunk.take())
        chunks_written += 1
        if opts.on_chunk is not None:
            opts.on_chunk(chunks_written)

    decoded = prefetch(items, embedder.preprocess, fmt, opts.decode_threads, depth, opts.decode)
    try:
        with contextlib.closing(decoded):  # on an error, stop the decode workers now
            for pos, result in decoded:
                i = int(todo[pos])
                if isinstance(result, str):
                    chunk.add(inputs.paths[i], inputs.stats[i], None, result)
                    bar.update(1)
                    bar.set_postfix(failed=chunk.failed_total, refresh=False)
                else:
                    batch.append((i, result))
                    if len(batch) == opts.batch_size:
                        run_batch()
                if len(chunk) >= opts.chunk_rows:
                    flush()
        if batch:
            run_batch()
        if len(chunk):
            flush()
    finally:
        bar.close()


class _ChunkBuffer:
    """Finished entries not yet in a chunk file."""

    def __init__(self, dim: int):
        self.dim = dim
        self.paths, self.stats, self.ok, self.reasons, self.emb = [], [], [], [], []
        self.failed_total = 0

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: str, stat, embedding: np.ndarray | None, reason: str = "") -> None:
        self.paths.append(path)
        self.stats.append(stat)
        self.ok.append(embedding is not None)
        self.reasons.append(reason)
        if embedding is not None:
            self.emb.append(embedding)
        else:
            self.failed_total += 1

    def take(self):
        emb = np.stack(self.emb) if self.emb else np.zeros((0, self.dim), np.float32)
        out = (self.paths, self.stats, self.ok, self.reasons, emb)
        self.paths, self.stats, self.ok, self.reasons, self.emb = [], [], [], [], []
        return out


__all__ = [
    "EmbedResult",
    "Inputs",
    "OutputPlan",
    "RunOptions",
    "discover",
    "embed_files",
    "prefetch",
    "read_embeddings",
]
