"""A telephone line without a socket: it keeps every message the bot sends, in order."""

from __future__ import annotations

import asyncio
import logging
from types import MappingProxyType

from ivr.logs import CallLog
from ivr.telephony.twilio import MediaFormat, Start, StreamWriter


def start_event(params=None) -> Start:
    return Start(1, "MZtest", "ACtest", "CAtest", ("inbound",), MappingProxyType(params or {}), MediaFormat("audio/x-mulaw", 8000, 1))


class RecordingLine:
    def __init__(self, params=None) -> None:
        self.start = start_event(params)
        self.log = CallLog(logging.getLogger("ivr.test"))
        self.writer = StreamWriter(self.start.stream_sid)
        self.sent: list[tuple[str, object]] = []  # ("media", bytes) | ("mark", name) | ("clear", None)
        self.ended_by_bot = False
        self.carrier = "twilio"
        self.control_id = self.start.call_sid
        self.transfer_to = None
        self.hung_up = asyncio.Event()
        #: True when the stream was left without a hang-up (a transfer).
        self.left = False
        self.changed = asyncio.Event()

    def _add(self, kind: str, value: object) -> None:
        self.sent.append((kind, value))
        self.changed.set()

    async def send_media(self, frame: bytes) -> None:
        self.writer.media(frame)
        self._add("media", frame)

    async def send_mark(self, name: str) -> None:
        self._add("mark", name)

    async def send_clear(self) -> None:
        self._add("clear", None)

    async def hang_up(self) -> None:
        self.hung_up.set()

    async def leave(self) -> None:
        self.left = True
        self.hung_up.set()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]

    def marks(self) -> list[str]:
        return [v for k, v in self.sent if k == "mark"]

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        """Until predicate() holds: re-checked on every message and every few ms (the engine's
        own state changes between messages too)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                try:
                    async with asyncio.timeout(0.005):
                        await self.changed.wait()
                except TimeoutError:
                    pass
