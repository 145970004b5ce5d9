"""Running a harness's event loop: uvloop where it is installed (it comes with uvicorn[standard],
as the server uses it), else asyncio's own."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run() on uvloop when available: the load generator's and the replayed caller's
    per-frame sends and receives then cost less CPU and run more promptly, so their timings are
    the server's rather than their own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
