"""An embedded engine standing in for a cloud provider while it is down, loaded once.

When it loads is `IVR_STAND_INS`: `on-failure` (the default) loads it on worker threads the
first time the provider fails, so a cloud-only server carries no embedded model it may never
use (the recogniser and the voice with onnxruntime are ~270 MB of a process's memory);
`preload` loads it at start-up, so the first call of an outage does not wait the second or two
the load takes. Either way nothing loads on the event loop, and whoever needs the stand-in
awaits `ready()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Generic, TypeVar

log = logging.getLogger("ivr.providers")

T = TypeVar("T")

MODES = ("on-failure", "preload")


class StandIn(Generic[T]):
    def __init__(self, what: str, factory: Callable[[], T] | None, prepare: Callable[[T], Awaitable[None]] | None = None,
                 preload: bool = False) -> None:
        self.what = what
        self._factory = factory
        self._prepare = prepare
        self.preload = preload
        self._engine: T | None = None
        self._loading: asyncio.Task | None = None

    @property
    def available(self) -> bool:
        return self._factory is not None

    @property
    def loaded(self) -> bool:
        return self._loading is not None and self._loading.done() and not self._loading.cancelled() \
            and self._loading.exception() is None

    @property
    def engine(self) -> T:
        """The engine object (built on first use; nothing is loaded by building it)."""
        if self._engine is None:
            assert self._factory is not None, "no stand-in installed"
            self._engine = self._factory()
        return self._engine

    def start_loading(self) -> None:
        """Begin loading in the background (the provider just failed); a no-op once begun."""
        if not self.available or (self._loading is not None and not self._loading.cancelled()
                                  and (not self._loading.done() or self._loading.exception() is None)):
            return
        try:
            self._loading = asyncio.get_running_loop().create_task(self._load(), name=f"load-{self.what}")
        except RuntimeError:  # no loop (a tool outside the server): `ready()` will load it
            return
        self._loading.add_done_callback(_log_failure)

    async def ready(self) -> T:
        """The engine, loaded (waiting for the load under way, or starting it)."""
        self.start_loading()
        if self._loading is None:
            await self._load()
        else:
            await asyncio.shield(self._loading)
        return self.engine

    async def _load(self) -> None:
        started = time.monotonic()
        engine = self.engine
        await engine.load()  # engines load their models on worker threads
        if self._prepare is not None:
            await self._prepare(engine)
        log.info("%s loaded as a stand-in in %.1f s", self.what, time.monotonic() - started)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the stand-in could not be loaded: %s", task.exception())
