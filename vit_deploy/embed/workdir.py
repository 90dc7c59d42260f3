"""``<out>.partial/``: where vit-embed keeps finished chunks until the final merge.

A chunk (``chunk-NNNNNN.npz``, written under a temp name, fsynced, renamed) holds a run
of entries, each a path with the (size, mtime_ns) it had, ok or the reason it failed,
and the embeddings of the ok ones. ``meta.json`` says which artifact and settings wrote
them: a resumed run must match it. ``WorkDir.open`` takes the output's lock (see
``vit_deploy.storage``): a second run on the same output stops with ``OutputLockedError``
naming the first, and whatever is in the work dir once the lock is held was left by a
run that is gone, so it is resumed (or discarded) with a line saying so.

``merge`` turns the chunks into the output: per input, the newest chunk entry whose
size and mtime still match the file counts; rows are streamed to the writer, failures to
the errors file, and ``rows + failed == inputs`` is checked before anything is renamed
into place.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vit_deploy.embed.writers import open_writer
from vit_deploy.errors import OutputPathError, ResumeError
from vit_deploy.storage import (
    OutputLock,
    acquire_lock,
    atomic_file,
    atomic_write_json,
    commit_file,
    temp_path,
)

if TYPE_CHECKING:
    from vit_deploy.embed.pipeline import Inputs, OutputPlan

log = logging.getLogger(__name__)

WORK_FORMAT = "vit_deploy.embed-work/1"
META_NAME = "meta.json"


class WorkDir:
    """``<out>.partial/``: ``meta.json`` plus ``chunk-NNNNNN.npz`` files, each holding a
    run of entries (path, size, mtime, ok, reason) and the embeddings of the ok ones."""

    def __init__(self, path: Path, meta: dict, lock: OutputLock | None = None):
        self.path = path
        self.meta = meta
        self.lock = lock
        self.next_index = 1 + max((self._index(p) for p in self.chunks()), default=-1)

    @classmethod
    def open(cls, path: Path, meta: dict, resume: bool) -> WorkDir:
        """Lock the output (``OutputLockedError`` naming the live writer, if there is one),
        then resume or discard what an earlier run left in ``path``: with the lock held,
        that run is gone."""
        lock = acquire_lock(output_of(path), what="vit-embed output")
        try:
            _open_locked(path, meta, resume)
        except BaseException:
            lock.release()
            raise
        return cls(path, meta, lock)

    def finish(self) -> None:
        """Remove the work dir (the outputs are in place) and release the lock."""
        shutil.rmtree(self.path)
        self.close()

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def chunks(self) -> list[Path]:
        return sorted(self.path.glob("chunk-*.npz"), key=self._index)

    @staticmethod
    def _index(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def read_entries(self, chunk: Path) -> dict[str, np.ndarray] | None:
        """A chunk's entries without its embeddings; None (and the file removed) if unreadable."""
        try:
            with np.load(chunk, allow_pickle=False) as z:
                return {k: z[k] for k in ("paths", "stats", "ok", "reasons")}
        except (OSError, ValueError, KeyError, EOFError) as exc:
            warnings.warn(
                f"dropping unreadable chunk {chunk} ({exc}); its images are done again",
                stacklevel=2,
            )
            chunk.unlink(missing_ok=True)
            return None

    def write_chunk(self, paths, stats, ok, reasons, embeddings: np.ndarray) -> Path:
        target = self.path / f"chunk-{self.next_index:06d}.npz"
        with atomic_file(target, "wb") as f:
            np.savez(
                f,
                paths=np.array(paths, dtype=str),
                stats=np.asarray(stats, dtype=np.int64).reshape(-1, 2),
                ok=np.asarray(ok, dtype=bool),
                reasons=np.array(reasons, dtype=str),
                embeddings=embeddings,
            )
        self.next_index += 1
        return target

    def finished(self, inputs: Inputs) -> np.ndarray:
        """A mask over the inputs: True where a chunk already holds the path's embedding and
        the file is unchanged. Failed entries are not finished: a resumed run retries them."""
        index = {p: i for i, p in enumerate(inputs.paths)}
        done = np.zeros(len(inputs), dtype=bool)
        for chunk in self.chunks():
            entries = self.read_entries(chunk)
            if entries is None:
                continue
            ok = entries["ok"]
            for path, stat in zip(entries["paths"][ok].tolist(), entries["stats"][ok], strict=True):
                i = index.get(path)
                if i is not None and (inputs.stats[i] == stat).all():
                    done[i] = True
        return done


def output_of(work: Path) -> Path:
    """The output a work dir ``<out>.partial`` belongs to: the path its lock is taken on."""
    return work.with_name(work.name.removesuffix(".partial"))


def _open_locked(path: Path, meta: dict, resume: bool) -> None:
    if path.exists():
        found = _read_meta(path)
        if not resume or found is None:
            _remove_work(path, found)
            if found is not None:
                log.warning("discarded the work dir of an earlier, unfinished run: %s", path)
        elif found != meta:
            raise ResumeError(
                f"{path} holds an unfinished run with other settings ({_diff(found, meta)}); "
                "expected the same artifact and --normalize choice. Rerun with --no-resume "
                "to discard it"
            )
        else:
            chunks = len(list(path.glob("chunk-*.npz")))
            log.warning("resuming an interrupted run: %d finished chunk(s) in %s", chunks, path)
    path.mkdir(exist_ok=True)
    for leftover in [*path.glob(".*.tmp-*"), *path.glob("*.tmp")]:  # a chunk cut short
        leftover.unlink()
    atomic_write_json(path / META_NAME, meta)


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / META_NAME).read_text())
    except (OSError, ValueError):
        return None


def _remove_work(path: Path, meta: dict | None) -> None:
    ours = path.is_dir() and (meta is not None or not any(path.iterdir()))
    if not ours:
        raise OutputPathError(
            f"{path}: expected a vit-embed work directory (with {META_NAME}) or nothing at that "
            "path, got something else; move it away"
        )
    shutil.rmtree(path)


def _diff(found: dict, want: dict) -> str:
    keys = sorted(k for k in set(found) | set(want) if found.get(k) != want.get(k))
    return ", ".join(f"{k}: {found.get(k)!r} there, {want.get(k)!r} now" for k in keys)


def merge(work: WorkDir, inputs: Inputs, plan: OutputPlan, dim: int) -> tuple[int, int]:
    """Write the final files from the chunks, atomically; return (rows, failed).

    Each input takes its entry from the latest chunk that holds it with the file's current
    size and mtime (a retried failure or a changed file supersedes the older entry)."""
    chunks = work.chunks()
    index = {p: i for i, p in enumerate(inputs.paths)}
    claimed = np.zeros(len(inputs), dtype=bool)
    keeps: list[np.ndarray] = []
    for chunk in reversed(chunks):  # pass 1, newest first: which entries count
        entries = work.read_entries(chunk)
        if entries is None:
            raise ResumeError(f"{chunk}: became unreadable during the run; rerun to redo it")
        keep = np.zeros(len(entries["paths"]), dtype=bool)
        pairs = zip(entries["paths"].tolist(), entries["stats"], strict=True)
        for k, (path, stat) in enumerate(pairs):
            i = index.get(path)
            if i is not None and not claimed[i] and (inputs.stats[i] == stat).all():
                claimed[i] = keep[k] = True
        keeps.append(keep)
    keeps.reverse()
    rows = sum(int(z.sum()) for z in _ok_masks(chunks, keeps))
    failed = int(claimed.sum()) - rows
    if not claimed.all() or rows + failed != len(inputs):
        missing = [inputs.paths[i] for i in np.flatnonzero(~claimed)[:5]]
        raise RuntimeError(
            f"internal error: {rows} rows + {failed} failed != {len(inputs)} inputs; "
            f"unaccounted for: {missing}"
        )
    err_tmp = temp_path(plan.errors)
    writer = open_writer(plan, rows, dim, work.meta)
    try:
        with open(err_tmp, "w", encoding="utf-8") as errors:
            # pass 2, in order: stream the rows and the errors
            for chunk, keep in zip(chunks, keeps, strict=True):
                with np.load(chunk, allow_pickle=False) as z:
                    ok, paths = z["ok"], z["paths"]
                    for k in np.flatnonzero(keep & ~ok):
                        errors.write(_error_line(paths[k].item(), z["reasons"][k].item()))
                    if (keep & ok).any():
                        ok_keep = keep[ok]
                        writer.write(paths[ok][ok_keep].tolist(), z["embeddings"][ok_keep])
        writer.commit()  # sidecars first, the main file last
    except BaseException:
        writer.abort()
        err_tmp.unlink(missing_ok=True)
        raise
    commit_file(err_tmp, plan.errors)
    return rows, failed


def _error_line(path: str, reason: str) -> str:
    line = json.dumps({"path": path, "reason": reason}, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: keep it, \u-escaped
        line = json.dumps({"path": path, "reason": reason})
    return line + "\n"


def _ok_masks(chunks: list[Path], keeps: list[np.ndarray]) -> Iterator[np.ndarray]:
    for chunk, keep in zip(chunks, keeps, strict=True):
        with np.load(chunk, allow_pickle=False) as z:
            yield keep & z["ok"]
