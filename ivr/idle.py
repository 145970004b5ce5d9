"""Ending media streams that have gone quiet.

Twilio sends a `media` message every 20 ms from `start` to `stop`, silence included, so a stream
that sends nothing for seconds is dead or hostile: a socket that never sends `start` holds a file
descriptor, and a started stream whose audio stopped holds a line (the engine's timers run on the
caller's audio, so they never fire for it). An `IdleWatch` cancels the stream's task once its
deadline passes; the stream handler (ivr.server) turns that cancellation into an ordinary end.

One timer per stream, re-armed only when it fires: the per-frame cost is one float store.
"""

from __future__ import annotations

import asyncio
import time


class IdleWatch:
    """Cancels `task` once `seconds` pass after `last_media` (creation, `start`, then each frame)."""

    __slots__ = ("seconds", "task", "started", "expired", "reason", "last_media", "_handle", "_loop")

    def __init__(self, seconds: float, task: asyncio.Task) -> None:
        self.seconds = seconds
        self.task = task
        #: The stream has sent `start` (it holds a line).
        self.started = False
        #: Set when the watch cancelled the task: "no_start", "no_media" or "evicted".
        self.expired = False
        self.reason = ""
        #: time.monotonic() of the last caller audio: the stream handler writes it per frame.
        self.last_media = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(seconds, self._check)

    def start(self, now: float) -> None:
        """The stream sent `start`: from now on it must keep sending audio."""
        self.started = True
        self.last_media = now

    def idle_for(self, now: float) -> float:
        return now - self.last_media

    def _check(self) -> None:
        self._handle = None
        left = self.last_media + self.seconds - time.monotonic()
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
        else:
            self.expire("no_media" if self.started else "no_start")

    def expire(self, reason: str) -> None:
        """End the stream now (its task sees a cancellation and must call `claimed()`)."""
        if self.expired or self.task.done():
            return
        self.expired, self.reason = True, reason
        self.close()
        self.task.cancel()

    def claimed(self) -> bool:
        """In the task, on CancelledError: True if this watch alone cancelled it (the
        cancellation is then absorbed and the stream ends normally); False: re-raise."""
        return self.expired and self.task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
