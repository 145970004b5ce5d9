"""What the request-per-piece cloud voices share (OpenAI speech and compatible servers, Azure).

These APIs take a whole text and stream its audio back; they are not incremental-text protocols.
So a turn is one HTTP request per piece, pipelined: piece N+1 is requested as soon as piece N
starts, and its audio waits in memory while N plays, so a clause boundary costs no round trip.

An adapter supplies `synthesize(text)`: an async generator of `(audio, sample_rate, encoding)`
that holds its HTTP stream open inside itself. Cancelling the task that drains it closes that
stream, which is how a barge-in hangs up on the server at once.

Failures: a request that fails before its first byte (connect error, 429, 5xx, no byte within
`first_byte_s`) is tried once more; after the first byte audio has been played, so a retry would
repeat words, and the turn fails with `TtsFailed`, which `FallbackTts` turns into the embedded
voice for the rest of the turn and its cool-off. A rejected key is never retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal

import numpy as np

from ivr import loopbound
from ivr.audio.resample import SUPPORTED_RATES
from ivr.providers import cloud
from ivr.providers.base import AudioChunk
from ivr.providers.elevenlabs import TtsFailed

log = logging.getLogger("ivr.tts.http")

FIRST_BYTE_S = 3.0
#: After the first byte, a response that goes quiet this long is abandoned.
STALL_S = 8.0
#: Requests in flight per turn: the piece playing and the next one.
PIPELINE = 2

Encoding = Literal["pcm16", "ulaw"]


class Retryable(Exception):
    """A failure worth one more request if no audio has arrived yet (429, 5xx, network)."""


class Fatal(Exception):
    """A failure no retry fixes (bad request, unknown voice); the log line says what to change."""


# --- audio decoding: odd byte counts, WAV headers, channels and sample widths ----------------------


class PcmDecoder:
    """Turns a provider's byte stream into 16-bit mono PCM of even length, chunk by chunk.

    Network chunks split samples anywhere, so an odd tail is carried to the next chunk. A stream
    that starts with `RIFF` is a WAV file some compatible servers send even when asked for pcm:
    its header sets the format and is not played.
    """

    def __init__(self, rate: int = 24000, channels: int = 1, bits: int = 16, sniff_wav: bool = True) -> None:
        self.rate, self.channels, self.bits = rate, channels, bits
        self.float = False
        self._carry = b""
        self._sniff = sniff_wav
        self._header = b""

    def set_format(self, rate: int | None = None, channels: int | None = None, bits: int | None = None) -> None:
        self.rate = int(rate or self.rate)
        self.channels = int(channels or self.channels)
        self.bits = int(bits or self.bits)
        self.check()

    def check(self) -> None:
        if self.rate not in SUPPORTED_RATES:
            raise Fatal(f"unsupported sample rate {self.rate} Hz (supported: {SUPPORTED_RATES})")
        if self.bits not in (8, 16, 32) or (self.bits == 32 and not self.float) or self.channels < 1:
            raise Fatal(f"unsupported audio format: {self.bits}-bit, {self.channels} channel(s)")

    def push(self, data: bytes) -> bytes:
        if self._sniff:
            self._header += data
            if len(self._header) < 4 and b"RIFF".startswith(self._header):
                return b""
            if not self._header.startswith(b"RIFF"):
                self._sniff, data, self._header = False, self._header, b""
            else:
                body = self._parse_wav()
                if body is None:
                    return b""
                self._sniff, data, self._header = False, body, b""
        data = self._carry + data
        frame = self.channels * self.bits // 8
        cut = len(data) - len(data) % frame
        data, self._carry = data[:cut], data[cut:]
        if not data:
            return b""
        if self.bits == 16 and self.channels == 1:
            return data
        if self.bits == 8:
            x = (np.frombuffer(data, dtype=np.uint8).astype(np.int16) - 128) << 8
        elif self.bits == 32:
            x = np.clip(np.frombuffer(data, dtype="<f4") * 32767.0, -32768, 32767).astype(np.int16)
        else:
            x = np.frombuffer(data, dtype="<i2")
        if self.channels > 1:
            x = x.reshape(-1, self.channels).mean(axis=1).astype(np.int16)
        return x.astype("<i2").tobytes()

    def _parse_wav(self) -> bytes | None:
        """The audio after the header once the whole header is in; None until then."""
        h = self._header
        if len(h) < 12:
            return None
        if h[8:12] != b"WAVE":
            raise Fatal("a RIFF stream that is not WAVE audio")
        at = 12
        while len(h) >= at + 8:
            kind, size = h[at:at + 4], int.from_bytes(h[at + 4:at + 8], "little")
            if kind == b"data":
                return h[at + 8:]  # streamed WAVs give a bogus size (0 or 0xFFFFFFFF): read to the end
            if len(h) < at + 8 + size:
                return None
            if kind == b"fmt ":
                tag, channels, rate = (int.from_bytes(h[at + 8 + a:at + 8 + b], "little") for a, b in ((0, 2), (2, 4), (4, 8)))
                bits = int.from_bytes(h[at + 22:at + 24], "little")
                if tag not in (1, 3, 0xFFFE):
                    raise Fatal(f"WAV audio with format tag {tag}: only PCM is played")
                self.float = tag == 3
                self.set_format(rate, channels, bits)
            at += 8 + size + (size & 1)
        return None


# --- the per-turn stream --------------------------------------------------------------------------


_CANCEL = object()


@dataclass
class _Piece:
    index: int
    text: str
    queue: asyncio.Queue = field(default_factory=loopbound.Queue)
    task: asyncio.Task | None = None


class HttpTts:
    """Base of the request-per-piece engines: subclasses set the names and `synthesize()`."""

    provider = ""  # metrics label
    name = ""  # for log lines
    sample_rate = 8000
    encoding: Encoding = "ulaw"
    first_byte_s = FIRST_BYTE_S
    stall_s = STALL_S
    limit: cloud.Limit

    async def load(self) -> None:
        pass

    def stream(self) -> "PieceStream":
        return PieceStream(self)

    def synthesize(self, text: str) -> AsyncIterator[tuple[bytes, int, Encoding]]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class PieceStream:
    """One bot turn: a request per piece, at most `PIPELINE` in flight, audio yielded in order."""

    def __init__(self, engine: HttpTts) -> None:
        self.engine = engine
        self.pieces: list[_Piece] = []
        self.current = 0
        self.ended = False
        self.cancelled = False
        self.failed = False
        self._wake = loopbound.Event()

    async def push(self, text: str) -> int:
        if self.ended:
            raise RuntimeError("push() after end() or cancel()")
        piece = _Piece(len(self.pieces), text)
        self.pieces.append(piece)
        self._start_due()
        self._wake.set()
        return piece.index

    async def end(self) -> None:
        self.ended = True
        self._wake.set()

    async def cancel(self) -> None:
        """Close every HTTP stream of the turn before returning (the server sees the hang-up)."""
        self.ended = self.cancelled = True
        tasks = [p.task for p in self.pieces if p.task is not None and not p.task.done()]
        for task in tasks:
            task.cancel()
        for piece in self.pieces:
            piece.queue.put_nowait(_CANCEL)
        self._wake.set()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AudioChunk]:
        i = 0
        while True:
            while i >= len(self.pieces) and not self.cancelled:
                if self.ended:
                    return
                self._wake.clear()
                await self._wake.wait()
            if self.cancelled:
                return
            piece = self.pieces[i]
            self.current = i
            self._start_due()
            while True:
                item = await piece.queue.get()
                if self.cancelled or item is _CANCEL:
                    return
                if isinstance(item, TtsFailed):
                    await self._abandon()
                    raise item
                yield item
                if item.last:
                    break
            i += 1

    def _start_due(self) -> None:
        if self.cancelled or self.failed:
            return
        for piece in self.pieces[self.current:self.current + PIPELINE]:
            if piece.task is None:
                piece.task = asyncio.get_running_loop().create_task(self._fetch(piece), name=f"{self.engine.provider}-tts-{piece.index}")

    async def _abandon(self) -> None:
        """After a failure the fallback speaks the rest: stop the other requests."""
        self.failed = True
        for piece in self.pieces:
            if piece.task is not None and not piece.task.done():
                piece.task.cancel()

    async def _fetch(self, piece: _Piece) -> None:
        engine = self.engine
        if not any(c.isalnum() for c in piece.text):
            # A piece of punctuation: the APIs answer 400 or silence, and a 400 would trip the fallback.
            piece.queue.put_nowait(AudioChunk(piece.index, b"", engine.sample_rate, engine.encoding, True))
            return
        for attempt in (1, 2):
            asked = time.monotonic()
            got = False
            rate, encoding = engine.sample_rate, engine.encoding
            try:
                async with engine.limit.slot():
                    audio = engine.synthesize(piece.text)
                    try:
                        async with asyncio.timeout(engine.first_byte_s) as deadline:
                            async for data, rate, encoding in audio:
                                if not data:
                                    continue
                                if not got:
                                    got = True
                                    cloud.observe_first(engine.provider, asked)
                                deadline.reschedule(asyncio.get_running_loop().time() + engine.stall_s)
                                piece.queue.put_nowait(AudioChunk(piece.index, data, rate, encoding, False))
                    finally:
                        await audio.aclose()  # type: ignore[attr-defined]
                piece.queue.put_nowait(AudioChunk(piece.index, b"", rate, encoding, True))
                return
            except asyncio.CancelledError:
                raise
            except cloud.KeyRejected as exc:
                cloud.error(engine.provider, "auth")
                log.error("%s", exc)
                reason = str(exc)
            except Exception as exc:
                reason = _describe(exc, got, engine)
                retry = not got and attempt == 1 and not isinstance(exc, Fatal)
                cloud.error(engine.provider, "retry" if retry else "stream")
                if retry:
                    log.warning("%s TTS: %s; retrying piece %d", engine.name, reason, piece.index)
                    continue
                log.warning("%s TTS: %s (piece %d, %s)", engine.name, reason, piece.index,
                            "after audio had started" if got else "no audio")
            piece.queue.put_nowait(TtsFailed(f"{engine.name} TTS: {reason}", got))
            return


def _describe(exc: BaseException, got: bool, engine: HttpTts) -> str:
    if isinstance(exc, TimeoutError):
        return f"no audio for {engine.stall_s if got else engine.first_byte_s:.1f} s"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (Retryable, Fatal)):
        return text
    return f"{type(exc).__name__}: {text}" if got else f"request failed ({type(exc).__name__}: {text})"

