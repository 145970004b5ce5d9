"""How many calls this process takes at once, counting calls Twilio is still connecting.

The voice webhook answers before the stream connects, so a burst of webhooks could all see a
free line. Each answered webhook therefore reserves a line for its CallSid for a short while
(ivr.fleet.RESERVATION_TTL_S); the stream that arrives with that CallSid takes the reserved line.
The reservations are kept in the shared state (ivr.fleet): behind a load balancer the stream
may reach another pod, which then claims the reservation, so the call counts once, on the pod
that holds it; a call that ends before its stream (the caller hung up while it rang) is
released by whichever pod gets its status callback.

`draining` is this pod's alone (a plain flag, set from a signal handler): other pods go on
answering while one drains.
"""

from __future__ import annotations

import time
from typing import Callable

from ivr.fleet import SharedState
from ivr.fleet.memory import MemoryState


class Admission:
    def __init__(self, max_calls: int, clock: Callable[[], float] = time.monotonic,
                 shared: SharedState | None = None) -> None:
        self.max_calls = max_calls
        self.draining = False
        self.shared: SharedState = shared if shared is not None else MemoryState(clock)
        self._active: dict[str, str] = {}  # connection key -> CallSid

    @property
    def active(self) -> int:
        return len(self._active)

    async def reserve(self, call_sid: str) -> bool:
        """At the voice webhook: True if the call may be answered with a stream."""
        if self.draining:
            return False
        if call_sid and call_sid in self._active.values():
            return True
        return await self.shared.reserve_line(call_sid, self.max_calls - len(self._active))

    async def enter(self, key: str, call_sid: str | None = None) -> bool:
        """When a stream connects (key identifies the connection). False: refuse it.

        A call whose webhook was answered (here or on another pod) is taken even while draining:
        the caller was promised a stream."""
        if call_sid and await self.shared.claim_line(call_sid):
            self._active[key] = call_sid
            return True
        if self.draining or len(self._active) + await self.shared.lines_reserved() >= self.max_calls:
            return False
        self._active[key] = call_sid or ""
        return True

    def leave(self, key: str) -> None:
        self._active.pop(key, None)

    async def ended(self, call_sid: str) -> None:
        """Twilio says the call is over: its reservation, if its stream never came, is freed."""
        if call_sid:
            await self.shared.claim_line(call_sid)
