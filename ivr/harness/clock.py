"""The call's clock: one time base for everything the harness sends, plays and records.

Call time runs `speed` times faster than the wall clock. Every deadline is an absolute point on
that clock (frame k is due at k * 20 ms), never "sleep 20 ms again", so lateness in one step is
not carried into the next and a long call does not drift.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ivr.harness.readbatch import ReadBatch


class CallClock:
    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = float(speed)
        self._t0: float | None = None

    def start(self, at: float | None = None) -> None:
        """Call time 0 is monotonic time `at` (default: now)."""
        self._t0 = time.monotonic() if at is None else at

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def now_ms(self) -> float:
        return self.call_ms(time.monotonic())

    def call_ms(self, monotonic: float) -> float:
        """The call clock's reading at time.monotonic() reading `monotonic`."""
        if self._t0 is None:
            return 0.0
        return (monotonic - self._t0) * 1000.0 * self.speed

    def monotonic_at(self, call_ms: float) -> float:
        """The time.monotonic() reading at which the call clock reads `call_ms`."""
        if self._t0 is None:
            raise RuntimeError("the call clock has not started")
        return self._t0 + self.wall_seconds(call_ms)

    def wall_seconds(self, call_ms: float) -> float:
        """Wall-clock seconds that `call_ms` of call time take."""
        return call_ms / 1000.0 / self.speed



#: Frames due this soon are sent now: the event loop's timers have millisecond resolution
#: (uvloop's, libuv's) and may fire that much before their time.
TIMER_RESOLUTION_S = 0.001


def timer_delay(seconds: float) -> float:
    """A wait of `seconds` as a timer of the event loop should be given it: at least the
    timers' resolution. A timer may fire up to that much early (the loop's clock is whole
    milliseconds, read once per pass); one set again for the fraction of a millisecond left
    would fire at once, and again, for as long as that fraction lasts. A wait is at most that
    much late instead."""
    return seconds if seconds >= TIMER_RESOLUTION_S else TIMER_RESOLUTION_S


#: Call clocks start on this grid of the monotonic clock (`FramePacer.start_at`): it is what
#: lets calls share a wake-up. A call's own frames stay exactly 20 ms apart on its own clock;
#: only where call time 0 falls moves, by less than this.
START_GRID_S = 0.004


class FramePacer:
    """One timer for the caller frames of every call on the loop.

    Each call registers a callback with the monotonic time its next frame is due; the callback
    sends that frame and returns when the following one is due (or None: no more frames). A
    timer, a future and a task switch per frame and call cost more than the frame itself under
    `ivr load`; here one timer serves every call whose frame is due. Calls whose clocks start on
    the same point of the start grid have their frames due at the same instants: they wait in
    one bucket and share one wake-up, with no heap operation per frame.

    A late call sends one frame per pass and the next pass comes after whatever else is ready
    to run, so the plan and the mark echoes still run between catch-up frames.
    """

    def __init__(self, reads: ReadBatch | None = None) -> None:
        #: Read after each pass (`ivr load`): the bot's messages wait for the pacer's wake-ups.
        self.reads = reads
        #: Callbacks by due time in whole microseconds (exact keys: the same instant computed
        #: from two calls' clocks may differ in its last float bits), and a heap of those keys.
        self._buckets: dict[int, list[Callable[[float], float | None]]] = {}
        self._keys: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def start_at(now: float) -> float:
        """The first point of the start grid at or after monotonic time `now`."""
        return math.ceil(now / START_GRID_S) * START_GRID_S

    def add(self, due: float, send: Callable[[float], float | None]) -> None:
        """Call `send(now)` at monotonic time `due`, and again at each time it returns."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._put(due, send)
        if due < self._timer_at:
            self._arm(due)

    def _put(self, due: float, send: Callable[[float], float | None]) -> None:
        key = int(due * 1e6 + 0.5)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [send]
            heapq.heappush(self._keys, key)
        else:
            bucket.append(send)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._run)

    def _run(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        keys, buckets = self._keys, self._buckets
        now = time.monotonic()
        horizon = (now + TIMER_RESOLUTION_S) * 1e6
        # Taken out before any runs: a frame that falls due again within the horizon (a late
        # call catching up) waits for the next pass.
        due = []
        while keys and keys[0] <= horizon:
            due.append(buckets.pop(heapq.heappop(keys)))
        put = self._put
        for bucket in due:
            for send in bucket:
                following = send(now)
                if following is not None:
                    put(following, send)
        if keys:
            self._arm(keys[0] / 1e6)
        if self.reads is not None:
            self.reads.read_ready()
