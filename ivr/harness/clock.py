"""The call's clock: one time base for everything the harness sends, plays and records.

Call time runs `speed` times faster than the wall clock. Every deadline is an absolute point on
that clock (frame k is due at k * 20 ms), never "sleep 20 ms again", so lateness in one step is
not carried into the next and a long call does not drift.
"""

from __future__ import annotations

import asyncio
import time


class CallClock:
    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = float(speed)
        self._t0: float | None = None
        self._sleeper: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Call time 0 is now."""
        self._t0 = time.monotonic()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def now_ms(self) -> float:
        if self._t0 is None:
            return 0.0
        return (time.monotonic() - self._t0) * 1000.0 * self.speed

    def monotonic_at(self, call_ms: float) -> float:
        """The time.monotonic() reading at which the call clock reads `call_ms`."""
        if self._t0 is None:
            raise RuntimeError("the call clock has not started")
        return self._t0 + self.wall_seconds(call_ms)

    def wall_seconds(self, call_ms: float) -> float:
        """Wall-clock seconds that `call_ms` of call time take."""
        return call_ms / 1000.0 / self.speed

    async def sleep_until(self, call_ms: float) -> None:
        """Wait until the call clock reads `call_ms` (one turn of the loop if it already has), or
        until `wake()`.

        One sleeper at a time: the frame pacer, which must stop at once when the caller hangs up
        rather than at the next frame. Built like asyncio.sleep (a future and a timer) so that it
        costs no more per frame; a timeout around an Event would raise and catch once per frame.
        """
        delay = call_ms - self.now_ms()
        if delay <= 0:
            # Late: still let the other tasks run once (the plan, the mark echoes), so a burst of
            # catch-up frames does not run past what they would have done between two frames.
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        self._sleeper = sleeper = loop.create_future()
        timer = loop.call_later(self.wall_seconds(delay), _resolve, sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleeper = None

    def wake(self) -> None:
        """End the current `sleep_until` now."""
        if self._sleeper is not None:
            _resolve(self._sleeper)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
