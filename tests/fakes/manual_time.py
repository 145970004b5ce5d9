"""A clock that moves only when a test says so, for the engine's timers (ivr.call.timebase)."""

from __future__ import annotations

import asyncio


class ManualTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._moved = asyncio.Event()

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        while not event.is_set():
            if until is not None and self.t >= until:
                return False
            moved = self._moved
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(event.wait()), asyncio.ensure_future(moved.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in pending:
                task.cancel()
        return True

    async def advance(self, seconds: float, step: float = 0.02) -> None:
        """Move on by `seconds` in steps, letting every waiter run at each step."""
        end = self.t + seconds
        while self.t < end - 1e-9:
            self.t = min(end, self.t + step)
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()
            for _ in range(20):
                await asyncio.sleep(0)
