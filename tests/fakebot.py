"""A tiny bot on 127.0.0.1 speaking the Twilio Media Streams protocol, scripted per test.

Each connection gets a `BotSession`; the test's behaviour coroutine sends audio, marks and
clears on cue and waits on what the caller sends (never on the wall clock).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ivr.audio import FRAME_BYTES, pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony.twilio import Media, Start, Stop, StreamParser, StreamWriter
from ivr.telephony.twilio import Mark as MarkEcho

WAIT = 10.0  # seconds: generous upper bound for anything a test waits on


def tone_ulaw(ms: int, freq: float = 440.0, level: float = 0.3) -> bytes:
    n = ms * 8
    t = np.arange(n) / 8000.0
    pcm = (np.sin(2 * math.pi * freq * t) * level * 32767).astype("<i2")
    return pcm16_to_ulaw(pcm.tobytes())


def frame_is_loud(payload: bytes, dbfs: float = -40.0) -> bool:
    pcm = np.frombuffer(ulaw_to_pcm16(payload), dtype="<i2").astype(np.float64)
    rms = math.sqrt(float((pcm * pcm).mean())) if len(pcm) else 0.0
    return rms > 32768 * 10 ** (dbfs / 20)


@dataclass
class Received:
    wall: float  # time.monotonic() at arrival
    event: object


@dataclass
class BotSession:
    ws: ServerConnection
    parser: StreamParser = field(default_factory=StreamParser)
    received: list[Received] = field(default_factory=list)
    start: Start | None = None
    writer: StreamWriter | None = None
    sent: list[tuple[float, str]] = field(default_factory=list)  # (wall, kind)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def headers(self):
        return self.ws.request.headers

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                event = self.parser.parse(message)
                self.received.append(Received(time.monotonic(), event))
                if isinstance(event, Start):
                    self.start = event
                    self.writer = StreamWriter(event.stream_sid)
                if isinstance(event, Stop):
                    self.stopped.set()
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.stopped.set()
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = WAIT):
        """Wait until predicate() is truthy, re-checked on every message received."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                value = predicate()
                if value:
                    return value
                if self.stopped.is_set():
                    raise AssertionError("the caller hung up first")
                await self._changed.wait()

    # --- what the caller sent -----------------------------------------------------------

    def media(self) -> list[Media]:
        return [r.event for r in self.received if isinstance(r.event, Media)]

    def last_media_ms(self) -> int:
        frames = self.media()
        return frames[-1].timestamp_ms if frames else -1

    def echoes(self) -> list[Received]:
        return [r for r in self.received if isinstance(r.event, MarkEcho)]

    async def wait_started(self) -> Start:
        return await self.wait_for(lambda: self.start)

    async def wait_media_ms(self, ms: int) -> None:
        await self.wait_for(lambda: self.last_media_ms() >= ms)

    async def wait_caller_speech(self, since_chunk: int = 0) -> Media:
        """The first loud caller frame after chunk `since_chunk`."""
        return await self.wait_for(
            lambda: next((m for m in self.media() if m.chunk > since_chunk and frame_is_loud(m.payload)), None)
        )

    async def wait_caller_silence(self, after: Media, frames: int = 10) -> Media:
        """The frame ending `frames` quiet frames in a row after `after`."""

        def found():
            quiet = 0
            for m in self.media():
                if m.chunk <= after.chunk:
                    continue
                quiet = 0 if frame_is_loud(m.payload) else quiet + 1
                if quiet >= frames:
                    return m
            return None

        return await self.wait_for(found)

    async def wait_echo(self, name: str) -> Received:
        return await self.wait_for(lambda: next((r for r in self.echoes() if r.event.name == name), None))

    # --- what the bot sends -------------------------------------------------------------

    async def send_audio(self, ulaw: bytes, piece: int = FRAME_BYTES) -> None:
        for i in range(0, len(ulaw), piece):
            await self.ws.send(self.writer.media(ulaw[i : i + piece]))
        self.sent.append((time.monotonic(), "media"))

    async def mark(self, name: str) -> None:
        await self.ws.send(self.writer.mark(name))
        self.sent.append((time.monotonic(), f"mark:{name}"))

    async def clear(self) -> None:
        await self.ws.send(self.writer.clear())
        self.sent.append((time.monotonic(), "clear"))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)


Behaviour = Callable[[BotSession], Awaitable[None]]


class FakeBot:
    """`async with FakeBot(behaviour) as bot:` then replay against `bot.url`."""

    def __init__(self, behaviour: Behaviour | None = None, close_after: bool = False, strict: bool = True) -> None:
        """`strict`: a behaviour that fails (e.g. the caller hung up before its cue) fails the test."""
        self.behaviour = behaviour
        self.strict = strict
        self.close_after = close_after
        self.sessions: list[BotSession] = []
        self.failures: list[BaseException] = []
        self.url = ""

    async def _handle(self, ws: ServerConnection) -> None:
        session = BotSession(ws)
        self.sessions.append(session)
        reader = asyncio.create_task(session._read())
        try:
            if self.behaviour is not None:
                await session.wait_started()
                await self.behaviour(session)
            if self.close_after:
                await ws.close()
            await reader
        except ConnectionClosed:
            pass
        except Exception as exc:  # surfaced by the test through `failures`
            self.failures.append(exc)
            if self.strict:
                raise
        finally:
            reader.cancel()

    async def __aenter__(self) -> "FakeBot":
        self._server = await serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/media"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        if self.strict and self.failures and exc[0] is None:
            raise self.failures[0]
