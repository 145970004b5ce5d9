"""Per-call event queues for the web phone's side channel, keyed by the stream's streamSid.

The browser subscribes (GET /phone/events?streamSid=MZ…) before it opens /media with that
streamSid; when the call starts, the server binds the call's events to the subscriber. Calls
nobody subscribed to publish nothing here (their listener is None, or only writes the capture).
"""

from __future__ import annotations

import asyncio
import time

MAX_QUEUED = 2000  # events; a browser that stops reading loses the oldest news, not the call


class Subscriber:
    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self.queue: asyncio.Queue[dict] = asyncio.Queue(MAX_QUEUED)
        self.bound = asyncio.Event()
        self.dropped = 0
        self._t0 = time.monotonic()

    def bind(self) -> None:
        self._t0 = time.monotonic()
        self.bound.set()

    def publish(self, event: dict) -> None:
        event = {**event, "t_ms": round((time.monotonic() - self._t0) * 1000, 1)}
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


class EventHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, Subscriber] = {}

    def subscribe(self, stream_sid: str) -> Subscriber | None:
        """A new subscriber, or None if that stream already has one (no eavesdropping)."""
        if stream_sid in self._subscribers:
            return None
        sub = self._subscribers[stream_sid] = Subscriber(stream_sid)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if self._subscribers.get(sub.stream_sid) is sub:
            del self._subscribers[sub.stream_sid]

    def bind(self, stream_sid: str) -> Subscriber | None:
        """The call with this streamSid has started: its subscriber, if any and not yet bound."""
        sub = self._subscribers.get(stream_sid)
        if sub is None or sub.bound.is_set():
            return None
        sub.bind()
        return sub
