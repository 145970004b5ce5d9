"""How many calls this process takes at once, counting calls Twilio is still connecting.

The voice webhook answers before the stream connects, so a burst of webhooks could all see a
free line. Each answered webhook therefore reserves a place for its CallSid for a short while;
the stream that arrives with that CallSid takes the reserved place.
"""

from __future__ import annotations

import time
from typing import Callable

#: Long enough for Twilio to open the stream after fetching our TwiML (normally under a second).
RESERVATION_SECONDS = 15.0


class Admission:
    def __init__(self, max_calls: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_calls = max_calls
        self.draining = False
        self._clock = clock
        self._active: set[str] = set()
        self._reserved: dict[str, float] = {}

    @property
    def active(self) -> int:
        return len(self._active)

    def _expire(self) -> None:
        now = self._clock()
        for sid in [s for s, until in self._reserved.items() if until <= now]:
            del self._reserved[sid]

    def _used(self) -> int:
        return len(self._active) + len(self._reserved)

    def reserve(self, call_sid: str) -> bool:
        """At the voice webhook: True if the call may be answered with a stream."""
        if self.draining:
            return False
        self._expire()
        if call_sid in self._reserved or call_sid in self._active:
            return True
        if self._used() >= self.max_calls:
            return False
        self._reserved[call_sid] = self._clock() + RESERVATION_SECONDS
        return True

    def enter(self, key: str, call_sid: str | None = None) -> bool:
        """When a stream connects (key identifies the connection). False: refuse it."""
        self._expire()
        if call_sid and self._reserved.pop(call_sid, None) is not None:
            self._active.add(key)
            return True
        if self.draining or self._used() >= self.max_calls:
            return False
        self._active.add(key)
        return True

    def leave(self, key: str) -> None:
        self._active.discard(key)
