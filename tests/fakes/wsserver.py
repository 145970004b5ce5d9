"""Run a `websockets` server on 127.0.0.1 in a background thread (its own event loop), so a
fake can serve a test whatever loop the test itself runs, and be cut or reconfigured from it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable

from websockets.asyncio.server import serve


class ThreadedServer:
    def __init__(self, handler: Callable[[Any], Awaitable[None]], process_request=None, port: int = 0) -> None:
        self._handler = handler
        self._process_request = process_request
        self._port = port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="fake-ws")
        self.port = 0

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self.loop.create_future()
        async with serve(self._handler, "127.0.0.1", self._port, process_request=self._process_request,
                         max_size=2**22, ping_interval=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    def start(self) -> "ThreadedServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake WebSocket server did not start")
        return self

    def call(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on the server's loop (thread-safe)."""
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(10)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
