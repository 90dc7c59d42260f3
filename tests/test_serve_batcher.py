"""The dynamic batcher in-process, with a stand-in model that records each call: which
images run together under each wait policy, admission and withdrawal."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from vit_deploy.errors import ConfigError
from vit_deploy.serve.batcher import DynamicBatcher, QueueFullError


class RecordingModel:
    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(pixels))
        return {"embedding": pixels.reshape(len(pixels), -1)[:, :2] * 2}


def pixels(value: float) -> np.ndarray:
    return np.full((3, 2, 2), value, np.float32)


def run(coro_fn, **kw):
    """Run ``coro_fn(batcher, model)`` with a started batcher; stop it afterwards."""

    async def main():
        model = RecordingModel()
        batcher = DynamicBatcher(model, **{"max_batch": 8, "max_queue": 16, **kw})
        batcher.start()
        try:
            return await asyncio.wait_for(coro_fn(batcher, model), 10)
        finally:
            await batcher.stop()

    return asyncio.run(main())


async def admitted_submit(batcher, *values):
    batcher.admit(len(values))
    return await batcher.submit([pixels(v) for v in values])


def test_lone_request_runs_at_once_with_incoming_policy():
    async def body(batcher, model):
        out = await admitted_submit(batcher, 1.0)  # a 60 s window it must not wait out
        assert np.array_equal(out[0]["embedding"], [2.0, 2.0])
        assert model.batches == [1] and batcher.depth == 0

    run(body, max_delay_s=60.0)


def test_incoming_policy_waits_for_images_still_decoding():
    async def body(batcher, model):
        batcher.admit(3)  # three single-image requests admitted, all decoding
        first = asyncio.ensure_future(batcher.submit([pixels(1.0)]))
        await asyncio.sleep(0.2)
        assert model.batches == []  # two more are on their way: it waits for them
        rest = [asyncio.ensure_future(batcher.submit([pixels(v)])) for v in (2.0, 3.0)]
        outs = await asyncio.gather(first, *rest)
        assert model.batches == [3]
        assert [o[0]["embedding"][0] for o in outs] == [2.0, 4.0, 6.0]  # each its own row

    run(body, max_delay_s=60.0)


def test_withdrawn_request_stops_the_wait():
    async def body(batcher, model):
        batcher.admit(2)
        first = asyncio.ensure_future(batcher.submit([pixels(1.0)]))
        await asyncio.sleep(0.1)
        assert model.batches == []
        batcher.withdraw(1)  # the other request's image failed to decode
        await first
        assert model.batches == [1] and batcher.depth == 0

    run(body, max_delay_s=60.0)


def test_window_policy_waits_out_the_window_unless_the_batch_fills():
    async def body(batcher, model):
        started = time.perf_counter()
        await admitted_submit(batcher, 1.0)
        assert time.perf_counter() - started >= 0.3
        full = await admitted_submit(batcher, *range(8))  # max_batch: no waiting
        assert model.batches == [1, 8] and len(full) == 8

    run(body, max_delay_s=0.3, wait="window")


def test_admission_is_whole_or_nothing():
    async def body(batcher, model):
        batcher.admit(10)
        with pytest.raises(QueueFullError, match="room for 7 image"):
            batcher.admit(7)  # 10 of 16 taken
        batcher.admit(6)
        batcher.withdraw(16)
        assert batcher.depth == 0
        with pytest.raises(RuntimeError, match="admitted"):
            await batcher.submit([pixels(1.0)])  # never admitted

    run(body, max_delay_s=0.0)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="wait: expected one of"):
        DynamicBatcher(RecordingModel(), max_batch=1, max_delay_s=0, max_queue=1, wait="never")
    with pytest.raises(ConfigError, match="max_batch >= 1"):
        DynamicBatcher(RecordingModel(), max_batch=0, max_delay_s=0, max_queue=1)
