"""ONNX Runtime's intra-op threads at idle priority (``vit-serve --ort-spin-idle``, Linux).

Why: on a server the model shares the cores with decoding and HTTP. If the intra-op
threads sleep when they run out of work, every parallel section of a call wakes them again
(measured on ViT-S/16 at batch 1: a model call 4 ms slower than with spinning, and a longer
tail); if they spin, they take CPU that decoding needs under load (7% fewer images/s at 32
clients, spinning at most 200 us). At ``SCHED_IDLE`` they spin only on CPU that no other
thread wants: the kernel runs any runnable thread of normal priority first.

The caveat: a worker at idle priority also yields to every other process on the machine.
On a host whose cores other processes keep busy, a model call waits for the CPU they leave.

Which threads: those that appear in this process while the session is created (ONNX
Runtime starts a session's intra-op pool then, and ``import onnxruntime`` a thread of its
own, so the import comes first); the thread that calls the model keeps its priority.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vit_deploy.errors import ConfigError

T = TypeVar("T")
TASKS = Path("/proc/self/task")


def thread_ids() -> set[int]:
    """The ids of this process's threads; a ConfigError where that is not Linux's to say."""
    if not hasattr(os, "SCHED_IDLE") or not TASKS.is_dir():
        raise ConfigError(f"expected Linux for idle-priority threads, got {sys.platform}")
    return {int(name) for name in os.listdir(TASKS)}


def with_started_threads(make: Callable[[], T]) -> tuple[T, set[int]]:
    """``make()``, and the ids of the threads that it started and that still run."""
    before = thread_ids()
    made = make()
    return made, thread_ids() - before


def set_idle_priority(tids: set[int]) -> None:
    """Put each thread (ids from ``with_started_threads``) at ``SCHED_IDLE``; a ConfigError
    if there is none."""
    if not tids:
        raise ConfigError(
            "expected ONNX Runtime to start intra-op threads to put at idle priority, got "
            "none (pass --threads 2 or more, or leave --threads out)"
        )
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # it ended meanwhile: nothing to set
            pass


__all__ = ["set_idle_priority", "thread_ids", "with_started_threads"]
