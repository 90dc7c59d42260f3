"""Timers, and the measurement loop: warm-up, then many timed repetitions.

- ``CpuTimer``: ``time.perf_counter`` around a call that returns when its work is done
  (CPU backends, and any call that copies its result to the host).
- ``CudaEventTimer``: CUDA events recorded on the current stream around the call, then a
  synchronisation on the end event; the stream is synchronised before the first
  repetition so earlier queued work is not counted. Right for work enqueued on that
  stream (PyTorch, TensorRT on torch's current stream).

``measure`` stops after ``iters`` repetitions, or once ``seconds`` of wall-clock time
has been spent on timed repetitions (at least ``min_iters`` of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vit_deploy.errors import ConfigError

MIN_ITERS = 3  # with a --seconds budget, never fewer (percentiles of 1 sample mean little)
MAX_ITERS = 100_000


class CpuTimer:
    name = "perf_counter"

    def prepare(self) -> None:
        pass

    def time(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class CudaEventTimer:
    name = "cuda_events"

    def __init__(self, device=None):
        import torch

        self._torch = torch
        self.device = device

    def prepare(self) -> None:
        self._torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> float:
        cuda = self._torch.cuda
        stream = cuda.current_stream(self.device)
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds


@dataclass(frozen=True)
class Budget:
    """How long to time: a fixed count (``iters``) or a wall-clock budget (``seconds``)."""

    warmup: int = 3
    iters: int | None = None
    seconds: float | None = 1.0
    min_iters: int = MIN_ITERS

    def __post_init__(self):
        check_budget(self.warmup, self.iters, self.seconds)


def check_budget(warmup: int, iters: int | None, seconds: float | None) -> None:
    """ConfigError for a budget that cannot work (before anything is timed)."""
    problems = []
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        problems.append(("warmup", f"expected an int >= 0, got {warmup!r}"))
    if iters is not None and seconds is not None:
        problems.append(
            ("iters", f"expected iters or seconds, not both (got {iters} and {seconds})")
        )
    if iters is None and seconds is None:
        problems.append(("iters", "expected iters or seconds, got neither"))
    if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool) or iters < 1):
        problems.append(("iters", f"expected a positive int, got {iters!r}"))
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
        problems.append(("seconds", f"expected a positive number, got {seconds!r}"))
    if problems:
        raise ConfigError(problems=problems)


def measure(fn: Callable[[], object], budget: Budget, timer=None) -> list[float]:
    """Per-repetition times in seconds, after ``budget.warmup`` untimed calls."""
    timer = timer or CpuTimer()
    for _ in range(budget.warmup):
        fn()
    timer.prepare()
    times: list[float] = []
    if budget.iters is not None:
        for _ in range(budget.iters):
            times.append(timer.time(fn))
        return times
    deadline = time.perf_counter() + budget.seconds
    while len(times) < MAX_ITERS:
        times.append(timer.time(fn))
        if len(times) >= budget.min_iters and time.perf_counter() >= deadline:
            break
    return times
