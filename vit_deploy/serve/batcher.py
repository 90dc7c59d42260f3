"""Dynamic batching: images from concurrent requests run through the model together.

One worker task takes the oldest waiting image and gathers up to ``max_batch`` images
for one model call, which runs in a thread of its own, so the event loop keeps
accepting requests meanwhile. While a call runs, new images queue; when it returns,
what queued runs next. One model call at a time, from one thread: safe for every
backend, thread-safe or not, and a second concurrent call would only split the cores.

How long an image waits for others (never past ``max_delay_s`` after it was queued):
- ``wait="incoming"`` (default): only while other admitted requests are still being
  decoded, i.e. images already in the server. A lone request runs at once instead of
  idling out the window; under load the batch fills while the model is busy.
- ``wait="window"``: the whole window unless the batch fills, like Triton Inference
  Server's ``max_queue_delay_microseconds``.

Backpressure: at most ``max_queue`` images admitted and unanswered. A request is
admitted whole or not at all (``admit`` raises ``QueueFullError``, which the app answers
with 503) before anything of it is decoded, and once admitted it has its room: no
request is ever half-run or refused after its decoding was spent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from vit_deploy.errors import ConfigError, ViTDeployError

log = logging.getLogger("vit_deploy.serve")

Outputs = dict[str, np.ndarray]


class QueueFullError(ViTDeployError, RuntimeError):
    """The queue has no room for a request's images."""


class BatcherStoppedError(ViTDeployError, RuntimeError):
    """The server is shutting down; the image was never run."""


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


WAIT_POLICIES = ("incoming", "window")


class DynamicBatcher:
    """``batcher.admit(n)``, then ``await batcher.submit([pixels, ...])`` -> one
    ``{output: row}`` dict per image (or ``batcher.withdraw(n)`` if the request failed).

    ``run_batch``: a (B, 3, S, S) float32 batch -> {name: (B, ...)} (``Embedder.run``);
    ``wait``: one of ``WAIT_POLICIES`` (see the module doc); ``metrics``: a
    ``ServeMetrics`` or None.
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], Outputs],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        wait: str = "incoming",
        metrics=None,
    ):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ConfigError(
                "batcher: expected max_batch >= 1, max_queue >= 1, max_delay_s >= 0, got "
                f"{max_batch}, {max_queue}, {max_delay_s}"
            )
        if wait not in WAIT_POLICIES:
            raise ConfigError(f"expected one of {WAIT_POLICIES}, got {wait!r}", option="wait")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.wait = wait
        self.metrics = metrics
        self._pending: deque[_Item] = deque()
        self._depth = 0  # admitted and not yet answered (decoding, waiting or in the model)
        self._incoming = 0  # admitted and not yet submitted (still decoding)
        self._wakeup = asyncio.Event()
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="vit-serve-model")
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self._depth

    def has_room(self, n: int) -> bool:
        return self._depth + n <= self.max_queue

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="vit-serve-batcher")

    async def stop(self) -> None:
        """Fail what still waits (nothing, after a graceful drain) and end the worker."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherStoppedError("the server is shutting down"))
        self._model_thread.shutdown(wait=True)

    def admit(self, n: int) -> None:
        """Reserve room for a request's ``n`` images, or raise ``QueueFullError``."""
        if not self.has_room(n):
            raise QueueFullError(
                f"queue full: expected room for {n} image(s), {self._depth} of "
                f"{self.max_queue} places are taken"
            )
        self._incoming += n
        self._set_depth(self._depth + n)

    def withdraw(self, n: int) -> None:
        """Give back the room of ``n`` admitted images that will never be submitted."""
        self._incoming -= n
        self._set_depth(self._depth - n)
        self._wakeup.set()  # the worker may be waiting for them

    async def submit(self, rows: list[np.ndarray]) -> list[Outputs]:
        """Queue an admitted request's images; their outputs, in order."""
        if len(rows) > self._incoming:
            raise RuntimeError(
                f"submit: expected at most {self._incoming} admitted image(s), got {len(rows)}"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(px, loop.create_future()) for px in rows]
        self._incoming -= len(rows)
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    # ------------------------------------------------------------------ worker

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_more()
            batch = self._take_batch()
            if batch:
                await self._run(loop, batch)

    async def _gather_more(self) -> None:
        """Wait until max_batch images wait, the oldest one's deadline passed, or (policy
        "incoming") no admitted image is still decoding."""
        deadline = self._pending[0].enqueued + self.max_delay_s
        while len(self._pending) < self.max_batch and (self.wait == "window" or self._incoming):
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        batch, dropped = [], 0
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if item.future.cancelled():  # its request went away: do not spend the model on it
                dropped += 1
            else:
                batch.append(item)
        if dropped:
            self._set_depth(self._depth - dropped)
        return batch

    async def _run(self, loop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            for item in batch:
                self.metrics.queue_wait.observe(started - item.enqueued)
        try:
            outputs = await loop.run_in_executor(
                self._model_thread, self._call_model, [item.pixels for item in batch]
            )
        except Exception as exc:  # noqa: BLE001 - every request of the batch hears of it
            log.exception("model call failed for a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            for i, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result({name: out[i] for name, out in outputs.items()})
        finally:
            self._set_depth(self._depth - len(batch))

    def _call_model(self, rows: list[np.ndarray]) -> Outputs:
        """In the model thread: stack, run, time."""
        pixels = np.stack(rows)
        started = time.perf_counter()
        outputs = self.run_batch(pixels)
        if self.metrics is not None:
            self.metrics.model_time.observe(time.perf_counter() - started)
        return {name: np.asarray(out) for name, out in outputs.items()}

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        if self.metrics is not None:
            self.metrics.queue_depth.set(depth)


__all__ = ["WAIT_POLICIES", "BatcherStoppedError", "DynamicBatcher", "QueueFullError"]
