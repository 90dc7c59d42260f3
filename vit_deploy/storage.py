"""The one way vit_deploy writes files and directories: nothing half-written, one writer.

``atomic_write_bytes/text/json``  a temp name beside the target, fsynced, ``os.replace``d.
``atomic_file(path)``             the same for writers that stream (a context manager).
``staged_dir(out)``               a hidden ``.NAME.partial-<pid>-<rand>`` directory beside
                                  ``out``, renamed onto it when the work is done; the old
                                  ``out`` stays intact until that rename.
``output_lock(path)``             an exclusive ``fcntl.flock`` on ``.NAME.lock`` beside the
                                  output, holding the owner's pid, host and command: a second
                                  writer gets ``OutputLockedError`` naming the first.

Files and directories are created with ``open``/``mkdir``, so they get the process umask's
mode (``mkstemp``/``mkdtemp`` would make them 0600/0700). Leftovers of a killed run
(``.NAME.partial-*``, ``.NAME.old-*``) are found by the lock, not by age: whoever holds
the lock of ``out`` owns every staging dir of ``out``, so anything there when the lock
is taken belongs to a run that is gone.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from vit_deploy.errors import OutputLockedError, OutputPathError

log = logging.getLogger(__name__)

LOCK_POLL_S = 0.1


# ---------------------------------------------------------------------- files


def temp_path(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """A hidden name beside ``path`` (same filesystem, so the rename is atomic), unique to
    this process and call: ``.NAME.<kind>-<pid>-<rand>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every FS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_file(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync ``tmp`` (already closed by its writer) and rename it onto ``path``."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kw) -> Iterator:
    """``with atomic_file(p) as f: f.write(...)``: ``p`` appears, complete, only when the
    block ends without an error; on an error the temp file is removed and ``p`` is untouched."""
    if "w" not in mode:
        raise ValueError(f"mode: expected a write mode ('w', 'wb'), got {mode!r}")
    path = Path(path)
    tmp = temp_path(path)
    f = open(tmp, mode.replace("w", "x"), **open_kw)  # "x": never follow a stale name
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path, "w", encoding=encoding, newline="\n") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int = 2, **dumps_kw) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, **dumps_kw) + "\n")


# ---------------------------------------------------------------------- the lock


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def owner_record(command: str | None = None) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def read_owner(path: str | os.PathLike) -> dict | None:
    """The owner record in the lock file of output ``path``, if one can be read."""
    try:
        return json.loads(lock_path(path).read_text())
    except (OSError, ValueError):
        return None


def describe_owner(owner: dict | None) -> str:
    if not owner:
        return "another process (its details are not written yet)"
    return (
        f"pid {owner.get('pid')} on {owner.get('host')} "
        f"({owner.get('command')!r}, since {owner.get('since')})"
    )


# flock locks belong to an open file, so two opens in one process exclude each other;
# this registry lets one thread's nested lock of the same output say so instead of hanging
_HELD: dict[Path, int] = {}
_HELD_GUARD = threading.Lock()


def _release(key: Path, fd: int) -> None:
    # unlink while still holding it: a waiter that opened the old file sees it gone (its
    # inode check fails) and retries on a fresh one
    with contextlib.suppress(OSError):
        lock_path(key).unlink()
    os.close(fd)
    with _HELD_GUARD:
        _HELD.pop(key, None)


class OutputLock:
    """An exclusive lock on one output path; see ``output_lock``. Released by
    ``release()``, at the end of a ``with`` block, or when the object is collected."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.lock_file = lock_path(path)
        self._release = weakref.finalize(self, _release, path, fd)

    @property
    def held(self) -> bool:
        return self._release.alive

    def release(self) -> None:
        self._release()  # a finalizer runs once: later calls do nothing

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _key(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent.resolve() / path.name


def acquire_lock(
    path: str | os.PathLike,
    *,
    wait: float | None = 0,
    command: str | None = None,
    what: str = "output",
) -> OutputLock:
    """Lock output ``path`` for this process. ``wait``: seconds to wait for another holder
    (0: fail at once, None: forever); then ``OutputLockedError`` naming the holder."""
    key = _key(path)
    with _HELD_GUARD:
        if key in _HELD:
            raise OutputLockedError(
                f"{path}: expected one writer, got a second one in this process "
                f"(pid {os.getpid()}) while the first is still writing"
            )
    lock_file = lock_path(key)
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"{path}: cannot create {str(key.parent)!r} ({exc.strerror})"
        ) from exc
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputPathError(
                f"{path}: expected a writable directory for its lock file, got "
                f"{exc.strerror} on {str(lock_file)!r}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise OutputLockedError(
                    f"{path}: expected no other writer of this {what}, got one: "
                    f"{describe_owner(read_owner(key))}; wait for it to finish or stop it"
                ) from None
            time.sleep(LOCK_POLL_S)
            continue
        # the holder we waited for may have unlinked the file: lock the one at the path
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(owner_record(command)) + "\n").encode())
    with _HELD_GUARD:
        _HELD[key] = fd
    return OutputLock(key, fd)


def output_lock(path: str | os.PathLike, **kw) -> OutputLock:
    """``with output_lock(out): ...``: see ``acquire_lock`` for the keywords."""
    return acquire_lock(path, **kw)


# ---------------------------------------------------------------------- staged directories


def stale_leftovers(out: str | os.PathLike) -> list[Path]:
    """Staging and swap dirs of ``out`` (call with ``out``'s lock held: then none is live)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    found = []
    for kind in ("partial", "old"):
        found += out.parent.glob(f".{out.name}.{kind}-*")
    return sorted(p for p in found if p.is_dir())


def remove_stale(out: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left beside ``out``, with a line saying so."""
    stale = stale_leftovers(out)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    if stale:
        size = ", ".join(p.name for p in stale)
        log.warning("removed %d staging dir(s) left by a killed run: %s", len(stale), size)
    return stale


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temp files of ``path`` (``temp_path``'s names) left by killed runs; call with the
    lock held."""
    path = Path(path)
    stale = [p for p in path.parent.glob(f".{path.name}.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def replace_dir(staging: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rename ``staging`` onto ``out``. POSIX cannot swap two directories in one step: an
    existing ``out`` is moved aside first (restored if the second rename fails)."""
    staging, out = Path(staging), Path(out)
    if not out.exists():
        os.replace(staging, out)
        fsync_dir(out.parent)
        return
    aside = temp_path(out, "old")
    os.replace(out, aside)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(aside, out)
        raise
    fsync_dir(out.parent)
    shutil.rmtree(aside, ignore_errors=True)


class StagedDir:
    """A staging directory for ``out``, with ``out``'s lock held until ``close``."""

    def __init__(self, out: str | os.PathLike, *, wait: float | None = 0, command=None):
        self.out = Path(out)
        self.lock = acquire_lock(self.out, wait=wait, command=command)
        try:
            remove_stale(self.out)
            self.path = temp_path(self.out, "partial")
            self.path.mkdir()  # mkdir, not mkdtemp: the umask's mode, as any directory
        except BaseException:
            self.lock.release()
            raise
        self.published = False

    def publish(self) -> Path:
        replace_dir(self.path, self.out)
        self.published = True
        return self.out

    def close(self) -> None:
        """Remove the staging dir unless published, and release the lock."""
        try:
            if not self.published:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.lock.release()

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self.published:
                self.publish()
        finally:
            self.close()


def staged_dir(out: str | os.PathLike, **kw) -> StagedDir:
    """``with staged_dir(out) as stage: write into stage.path``; published (renamed onto
    ``out``) when the block ends cleanly, removed when it raises. ``kw``: ``wait``,
    ``command`` (see ``acquire_lock``)."""
    return StagedDir(out, **kw)


__all__ = [
    "OutputLock",
    "StagedDir",
    "acquire_lock",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "commit_file",
    "output_lock",
    "read_owner",
    "remove_stale",
    "remove_stale_temps",
    "replace_dir",
    "staged_dir",
    "temp_path",
]
