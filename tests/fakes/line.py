"""A telephone line without a socket: it keeps every message the bot sends, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from types import MappingProxyType

from ivr.logs import CallLog
from ivr.session import Line, Transport
from ivr.telephony.twilio import MediaFormat, OutMark, OutMedia, Start, StreamWriter, parse_outbound


def start_event(params=None) -> Start:
    return Start(1, "MZtest", "ACtest", "CAtest", ("inbound",), MappingProxyType(params or {}), MediaFormat("audio/x-mulaw", 8000, 1))


class RecordingLine:
    """`max_frames_per_message`: 1 keeps one ("media", frame) entry per frame; more records each
    message the Speaker sends as one entry of the frames joined, as Twilio would get it."""

    def __init__(self, params=None, max_frames_per_message: int = 1) -> None:
        self.max_frames_per_message = max_frames_per_message
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

    async def send_frames(self, frames: list[bytes]) -> None:
        assert 0 < len(frames) <= self.max_frames_per_message, len(frames)
        payload = b"".join(frames)
        self.writer.media(payload)
        self._add("media", payload)

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


class KeptMessages(Transport):
    """A transport that keeps each message as it would have gone on the socket."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.changed = asyncio.Event()
        self.closed = False

    async def send(self, message: str | bytes) -> None:
        self.messages.append(message)
        self.changed.set()

    async def close(self, reason: str = "") -> None:
        self.closed = True
        self.changed.set()


class WireLine(Line):
    """The real `Line` and carrier writer (Twilio's unless given), with a transport that keeps
    every message: what the carrier would receive, message for message."""

    def __init__(self, params=None, writer=None) -> None:
        self.transport = KeptMessages()
        super().__init__(self.transport, start_event(params), CallLog(logging.getLogger("ivr.test")), "",
                         time.monotonic(), writer=writer)

    @property
    def messages(self) -> list[str | bytes]:
        return self.transport.messages

    @property
    def sent(self) -> list[tuple[str, object]]:
        """Twilio's messages read as Twilio reads them: ("media", payload) | ("mark", name) | ("clear", None)."""
        out: list[tuple[str, object]] = []
        for message in self.messages:
            event = parse_outbound(message, self.start.stream_sid)
            if isinstance(event, OutMedia):
                out.append(("media", event.payload))
            elif isinstance(event, OutMark):
                out.append(("mark", event.name))
            else:
                out.append(("clear", None))
        return out

    def kinds(self) -> list[str]:
        return [k for k, _ in self.sent]

    async def wait_for(self, predicate, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.transport.changed.clear()
                try:
                    async with asyncio.timeout(0.005):
                        await self.transport.changed.wait()
                except TimeoutError:
                    pass
