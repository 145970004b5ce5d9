"""The time a call runs on: now, and waiting for an event until a deadline.

The engine's timers (pacing, re-prompts, the call-time limit, waiting for the last words to be
heard) all go through one of these, so they run on the clock rather than on caller frames, and
a test can drive them with a clock of its own (tests/fakes/manual_time.py) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Timebase(Protocol):
    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        """Until `event` is set (True) or the clock reaches `until` (False); None: no deadline."""
        ...


class WallTime:
    """Monotonic seconds, the event loop's own clock."""

    @staticmethod
    def now() -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        if event.is_set():
            return True
        if until is None:
            await event.wait()
            return True
        delay = until - time.monotonic()
        if delay <= 0:
            return False
        try:
            async with asyncio.timeout(delay):
                await event.wait()
            return True
        except TimeoutError:
            return event.is_set()
