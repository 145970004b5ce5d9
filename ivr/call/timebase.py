"""The time a call runs on: now, and waiting for an event until a deadline.

The engine's timers (pacing, re-prompts, the call-time limit, waiting for the last words to be
heard) all go through one of these, so they run on the clock rather than on caller frames, and
a test can drive them with a clock of its own (tests/fakes/manual_time.py) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Mapping, Protocol

from ivr import loopbound
from ivr.telephony.twilio import CLOCK_RATE_PARAMETER


MAX_RATE = 50.0


def clock_rate(parameters: Mapping[str, str]) -> float:
    """The rate a stream's parameters ask for (CLOCK_RATE_PARAMETER); 1 if none or nonsense."""
    raw = parameters.get(CLOCK_RATE_PARAMETER)
    if raw is None:
        return 1.0
    try:
        rate = float(raw)
    except ValueError:
        return 1.0
    return rate if 0.1 <= rate <= MAX_RATE else 1.0


class Timebase(Protocol):
    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        """Until `event` is set (True) or the clock reaches `until` (False); None: no deadline."""
        ...


class WallTime:
    """Monotonic seconds, the event loop's own clock; `rate` > 1 runs it that many times faster
    (a replay harness that plays the call faster than real time says so: ivr.harness)."""

    def __init__(self, rate: float = 1.0) -> None:
        self.rate = rate
        self._t0 = time.monotonic()

    def now(self) -> float:
        if self.rate == 1.0:
            return time.monotonic()
        return self._t0 + (time.monotonic() - self._t0) * self.rate

    async def wait(self, event: asyncio.Event, until: float | None) -> bool:
        if event.is_set():
            return True
        if until is None:
            await event.wait()
            return True
        delay = (until - self.now()) / self.rate
        if delay <= 0:
            return False
        return await loopbound.wait_event(event, delay)
