"""A bounded pool of worker threads for CPU-heavy engine work, and once-per-process model loading.

Threads suffice: CTranslate2 and onnxruntime release the GIL while they compute. The pool is
bounded so that a burst of calls queues instead of oversubscribing the cores (which would slow
every call down at once); a job that has to queue says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

log = logging.getLogger("ivr.engines")

T = TypeVar("T")


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class WorkerPool:
    """`await pool.run(fn, *args)` runs `fn` on a worker thread without blocking the event loop.

    Cancelling the awaiting task drops a job that has not started; a running job finishes on its
    thread (engines keep their jobs short, e.g. one sentence, so cancellation is prompt).
    Not tied to an event loop, so one pool serves a process even across loops.
    """

    def __init__(self, workers: int, name: str) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = workers
        self.name = name
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"ivr-{name}")
        self._lock = threading.Lock()
        self._jobs = 0  # queued or running

    @property
    def jobs(self) -> int:
        return self._jobs

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            self._jobs += 1
            jobs = self._jobs
        if jobs > self.workers:
            log.info("%s workers busy (%d jobs for %d workers): waiting", self.name, jobs, self.workers)
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future: object) -> None:
        with self._lock:
            self._jobs -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Lazy(Generic[T]):
    """A model loaded at most once per process, on first use, with a log line giving its load time.

    `get()` loads on the calling thread (engines call it from a worker); `await aget()` loads on a
    worker thread so the event loop keeps running meanwhile.
    """

    def __init__(self, what: str, loader: Callable[[], T]) -> None:
        self.what = what
        self._loader = loader
        self._value: T | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    log.info("loading %s", self.what)
                    start = time.perf_counter()
                    self._value = self._loader()
                    log.info("loaded %s in %.2f s", self.what, time.perf_counter() - start)
        return self._value

    async def aget(self) -> T:
        if self._value is not None:
            return self._value
        return await asyncio.to_thread(self.get)


_models: dict[tuple, Lazy] = {}
_models_lock = threading.Lock()


def shared_model(key: tuple, what: str, loader: Callable[[], T]) -> Lazy[T]:
    """The process's one `Lazy` for `key` (model path and load options): engines built twice
    (a second settings object, a tool beside the server) still load each model once."""
    with _models_lock:
        lazy = _models.get(key)
        if lazy is None:
            lazy = _models[key] = Lazy(what, loader)
        return lazy
