"""The chunked decode pool in-process: results in order, each job's error on its own
future, cancelled jobs skipped, queued jobs taken in chunks, close() drains."""

from __future__ import annotations

import asyncio
import threading

import pytest

import vit_deploy.serve.pool as pool_module
from vit_deploy.serve.pool import ChunkedThreadPool


def square_or_fail(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x * x


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_results_in_order_and_errors_stay_with_their_job():
    async def main():
        pool = ChunkedThreadPool(square_or_fail, 2, "t")
        try:
            out = await asyncio.gather(*pool.submit([1, -2, 3, 4]), return_exceptions=True)
        finally:
            pool.close()
        assert out[0] == 1 and out[2] == 9 and out[3] == 16
        assert isinstance(out[1], ValueError) and "negative: -2" in str(out[1])

    run(main())


def test_jobs_queued_while_the_worker_is_busy_are_settled_in_one_callback(monkeypatch):
    settled: list[int] = []
    real_settle = pool_module._settle
    monkeypatch.setattr(
        pool_module, "_settle", lambda done: (settled.append(len(done)), real_settle(done))
    )
    started, release = threading.Event(), threading.Event()

    def job(x):
        if x == "block":
            started.set()
            release.wait(5)
        return x

    async def main():
        pool = ChunkedThreadPool(job, 1, "t", max_chunk=4)
        try:
            first = pool.submit(["block"])
            assert await asyncio.to_thread(started.wait, 5)  # the worker is inside it
            rest = pool.submit(list(range(6)))
            release.set()
            assert await asyncio.gather(*first, *rest) == ["block", *range(6)]
        finally:
            pool.close()

    run(main())
    assert settled == [1, 4, 2]  # the queued six in chunks of at most max_chunk


def test_a_job_raising_stopiteration_does_not_strand_its_chunk():
    def job(x):
        if x == 1:
            raise StopIteration  # cannot be set on a future as it is
        return x

    async def main():
        pool = ChunkedThreadPool(job, 1, "t")
        try:
            out = await asyncio.gather(*pool.submit([0, 1, 2]), return_exceptions=True)
        finally:
            pool.close()
        assert out[0] == 0 and out[2] == 2
        assert isinstance(out[1], RuntimeError) and "StopIteration" in str(out[1])

    run(main())


def test_cancelled_job_is_not_run():
    ran: list[int] = []
    started, release = threading.Event(), threading.Event()

    def job(x):
        if x == 0:
            started.set()
            release.wait(5)
        ran.append(x)
        return x

    async def main():
        pool = ChunkedThreadPool(job, 1, "t")
        try:
            first = pool.submit([0])
            assert await asyncio.to_thread(started.wait, 5)
            gone, kept = pool.submit([1, 2])
            gone.cancel()  # its request went away while it waited
            release.set()
            assert await asyncio.gather(*first, kept) == [0, 2]
        finally:
            pool.close()

    run(main())
    assert ran == [0, 2]


def test_close_runs_what_is_queued_then_refuses_more():
    async def main():
        pool = ChunkedThreadPool(square_or_fail, 1, "t")
        futures = pool.submit(range(20))
        pool.close()  # returns once the workers ran all 20 and stopped
        assert await asyncio.gather(*futures) == [x * x for x in range(20)]
        with pytest.raises(RuntimeError, match="closed"):
            pool.submit([1])

    run(main())


def test_bad_thread_count_is_refused():
    with pytest.raises(ValueError, match="threads >= 1 and max_chunk >= 1, got 0 and 16"):
        ChunkedThreadPool(square_or_fail, 0, "t")
