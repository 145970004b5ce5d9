"""The WebSocket protocol uvicorn runs for this server: uvicorn's own sans-I/O one, with its
receive queue bound to the loop once (ivr.loopbound): the ASGI receive of every caller frame
waits on that queue, and on Python 3.11 each wait cost a getpid() system call."""

from __future__ import annotations

import asyncio
import functools

from ivr import loopbound


@functools.cache
def websocket_protocol() -> type[asyncio.Protocol] | str:
    """The class for uvicorn.Config(ws=...); "auto" (uvicorn's choice, unchanged) when this
    uvicorn has no sans-I/O protocol or it no longer keeps its receive queue where we expect."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return "auto"

    class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            queue = getattr(self, "queue", None)
            if type(queue) is asyncio.Queue and queue.empty():
                self.queue = loopbound.Queue()

    return MediaWebSocketProtocol
