"""The engines' worker pool and once-per-process loading."""

from __future__ import annotations

import asyncio
import logging
import threading

from ivr.providers.workers import Lazy, WorkerPool


async def test_a_saturated_pool_queues_with_a_log_line_and_drops_cancelled_jobs(caplog):
    pool = WorkerPool(1, "test")
    release = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        release.wait(10)
        ran.append(name)
        return name

    first = asyncio.create_task(pool.run(job, "first"))
    await asyncio.sleep(0)
    with caplog.at_level(logging.INFO, logger="ivr.engines"):
        queued = asyncio.create_task(pool.run(job, "queued"))
        await asyncio.sleep(0)
    assert "test workers busy (2 jobs for 1 workers): waiting" in caplog.text
    queued.cancel()  # a caller hung up while waiting: its job must never run
    await asyncio.gather(queued, return_exceptions=True)
    release.set()
    assert await first == "first"
    assert await pool.run(job, "after") == "after"
    assert ran == ["first", "after"]
    assert pool.jobs == 0
    pool.shutdown()


async def test_lazy_loads_once_even_when_asked_from_many_tasks():
    loads = []

    def load() -> object:
        loads.append(1)
        return object()

    lazy = Lazy("a model", load)
    values = await asyncio.gather(*(lazy.aget() for _ in range(5)))
    assert len(loads) == 1 and all(v is values[0] for v in values) and lazy.loaded
