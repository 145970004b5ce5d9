"""ElevenLabs text-to-speech over the multi-context WebSocket (`multi-stream-input`).

Written with `websockets` rather than the `elevenlabs` SDK: the SDK (2.78) has no async or
multi-context WebSocket client and its realtime helper forces `wss://`, so it can reach neither
a regional proxy over ws:// nor our loopback fake. `elevenlabs.types` (`InitializeConnectionMulti`,
`SendTextMulti`, `FlushContext`, `CloseContext`, `KeepContextAlive`, `AudioOutputMulti`,
`FinalOutputMulti`) define the messages built and read here.

`output_format=ulaw_8000` is what Twilio plays, so chunks go out as `encoding="ulaw"` with no
transcoding. Each bot turn is one context on a shared socket (at most `MAX_CONTEXTS` per socket,
the service's limit); `end()` flushes the context; `cancel()` (barge-in) sends `close_context` and
the socket stays open for the next turn. Between turns open contexts get keep-alives.

ElevenLabs does not say which text piece an audio chunk belongs to; its alignment does (the
characters each chunk speaks, with times relative to the chunk). `PieceAligner` counts non-space
characters against the pieces pushed, splits a chunk where the next piece begins, and turns the
characters into word timings for the heard-text ledger.

Failures: before the first audio byte the context is retried once (on a new socket if the old one
died); after that, or when ElevenLabs cannot be reached, `FallbackTts` finishes the turn with the
embedded voice and keeps using it for a cool-off period (a `TtsStream` does not know its call, so
"the rest of the call" is approximated by time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote, urlencode

import websockets
from websockets.asyncio.client import connect

from ivr import loopbound
from ivr.config import ConfigError, Settings
from ivr.audio.resample import prepare as prepare_resampler
from ivr.providers import cloud
from ivr.providers.base import AudioChunk, TextToSpeech, TtsStream, WordTiming
from ivr.providers.health import Health, unready
from ivr.providers.standin import StandIn

log = logging.getLogger("ivr.tts.elevenlabs")

PROVIDER = "elevenlabs"
MAX_CONTEXTS = 5  # per socket (max_active_conversations; the service closes with 1008 beyond)
RATE = 8000
BYTES_PER_MS = 8
KEEPALIVE_S = 10.0
INACTIVITY_TIMEOUT_S = 60  # per context, sent as a query parameter (service default 20, max 180)
FIRST_AUDIO_TIMEOUT_S = 3.0
#: After the turn's text is flushed, this long without a message means its audio is complete
#: (used only when the alignment cannot tell: it is off, or spelled differently).
SETTLE_S = 1.5
SOCKET_IDLE_S = 60.0


class TtsFailed(Exception):
    def __init__(self, message: str, audio_sent: bool) -> None:
        super().__init__(message)
        self.audio_sent = audio_sent


# --- pure: alignment -> pieces and word timings ----------------------------------------------------


@dataclass
class Split:
    piece: int
    audio: bytes
    last: bool
    words: tuple[WordTiming, ...] = ()


@dataclass
class PieceAligner:
    """Which piece each chunk's audio belongs to, from its character alignment."""

    ends: list[int] = field(default_factory=list)  # cumulative non-space characters per piece
    seen: int = 0  # non-space characters spoken so far
    current: int = 0  # the piece being spoken
    audio_ms: int = 0  # audio received so far (alignment times are per chunk: this is their base)
    _word: str = ""
    _word_start: int = 0  # absolute ms
    _word_end: int = 0

    def add_piece(self, text: str) -> None:
        self.ends.append((self.ends[-1] if self.ends else 0) + sum(not c.isspace() for c in text))

    def _piece_of(self, char_number: int) -> int:
        p = self.current
        while p < len(self.ends) - 1 and char_number >= self.ends[p]:
            p += 1
        return p

    @property
    def complete(self) -> bool:
        """Every character pushed so far has been spoken."""
        return bool(self.ends) and self.seen >= self.ends[-1]

    def split(self, audio: bytes, alignment: dict | None) -> list[Split]:
        """Cut one chunk by piece. A word is reported in the sub-chunk where it ends, with times
        relative to that sub-chunk (a word begun in an earlier chunk starts below zero)."""
        chars, starts, durations = _alignment_lists(alignment)
        base = self.audio_ms
        self.audio_ms += len(audio) // BYTES_PER_MS
        if not chars:
            return [Split(self.current, audio, False)] if audio else []
        out: list[Split] = []
        cut = base  # absolute ms where the current sub-chunk begins
        words: list[WordTiming] = []

        def close_word() -> None:
            if self._word:
                words.append(WordTiming(self._word, self._word_start - cut, self._word_end - cut))
                self._word = ""

        for ch, start, dur in zip(chars, starts, durations):
            if ch.isspace():
                close_word()
                continue
            piece = self._piece_of(self.seen)
            if piece != self.current:
                close_word()
                at = min(self.audio_ms, base + max(0, start))
                out.append(Split(self.current, audio[(cut - base) * BYTES_PER_MS:(at - base) * BYTES_PER_MS], True, tuple(words)))
                words = []
                cut, self.current = at, piece
            if not self._word:
                self._word_start = base + start
            self._word += ch
            self._word_end = base + start + dur
            self.seen += 1
        if self.complete:
            close_word()
        out.append(Split(self.current, audio[(cut - base) * BYTES_PER_MS:], False, tuple(words)))
        return out


def _alignment_lists(alignment: dict | None) -> tuple[list[str], list[int], list[int]]:
    if not alignment:
        return [], [], []
    chars = alignment.get("chars") or []
    starts = alignment.get("charStartTimesMs") or alignment.get("char_start_times_ms") or []
    durations = (alignment.get("charDurationsMs") or alignment.get("charsDurationsMs")
                 or alignment.get("char_durations_ms") or [0] * len(chars))
    n = min(len(chars), len(starts), len(durations))
    return chars[:n], [int(s) for s in starts[:n]], [int(d) for d in durations[:n]]


# --- the socket pool -------------------------------------------------------------------------------


class _Socket:
    """One multi-context connection; routes server messages to the contexts' streams."""

    def __init__(self, engine: "ElevenLabsTts", ws: Any) -> None:
        self.engine = engine
        self.ws = ws
        self.contexts: dict[str, ElevenLabsStream] = {}
        self.closed = False
        self.idle_since = time.monotonic()
        self._reader = asyncio.create_task(self._read(), name="elevenlabs-socket")
        self._keepalive = asyncio.create_task(self._keep_alive(), name="elevenlabs-keepalive")

    @property
    def free(self) -> bool:
        return not self.closed and len(self.contexts) < self.engine.max_contexts

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    def detach(self, cid: str) -> None:
        self.contexts.pop(cid, None)
        if not self.contexts:
            self.idle_since = time.monotonic()

    async def _read(self) -> None:
        reason = "closed"
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                cid = msg.get("contextId") or msg.get("context_id")
                if "error" in msg or msg.get("code") and "audio" not in msg:
                    cloud.error(PROVIDER, "message")
                    text = f"{msg.get('error')}: {msg.get('message', '')}".strip()
                    log.warning("ElevenLabs error (%s): %s", cid or "socket", text)
                    targets = [self.contexts[cid]] if cid in self.contexts else list(self.contexts.values())
                    if cid not in self.contexts:
                        self.closed = True  # a socket-wide error: no new context goes here
                    for stream in targets:
                        stream.on_failure(f"ElevenLabs error: {text}")
                    continue
                stream = self.contexts.get(cid) if cid else None
                if stream is not None:
                    stream.on_message(msg)
                # Messages for closed contexts (audio after close_context) are dropped here.
        except websockets.ConnectionClosed as exc:
            reason = f"closed ({exc.rcvd.code if exc.rcvd else 'no close frame'}: {exc.rcvd.reason if exc.rcvd else ''})"
        except Exception as exc:
            log.exception("ElevenLabs socket reader failed")
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self.closed = True
            self._keepalive.cancel()
            if self in self.engine.sockets:
                self.engine.sockets.remove(self)
                self.engine.limit.release()
            for stream in list(self.contexts.values()):
                stream.on_failure(f"ElevenLabs socket {reason}")
            self.contexts.clear()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.engine.keepalive_s)
            if not self.contexts and time.monotonic() - self.idle_since > SOCKET_IDLE_S:
                await self.close()
                return
            for cid, stream in list(self.contexts.items()):
                if stream.waiting_for_text:
                    with contextlib.suppress(Exception):
                        await self.send({"text": "", "context_id": cid})

    async def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self.send({"close_socket": True})
        with contextlib.suppress(Exception):
            await self.ws.close()


class ElevenLabsTts:
    """The shared engine: a pool of multi-context sockets, at most `max_sockets` of them."""

    sample_rate = RATE
    encoding = "ulaw"

    def __init__(self, api_key: str, voice_id: str, model: str = "eleven_flash_v2_5",
                 url: str = "wss://api.elevenlabs.io", max_sockets: int = 40,
                 voice_settings: dict | None = None) -> None:
        if model == "eleven_v3":
            raise ConfigError("ELEVENLABS_MODEL: eleven_v3 has no WebSocket API; use eleven_flash_v2_5 or eleven_turbo_v2_5")
        if not voice_id:
            raise ConfigError("ELEVENLABS_VOICE_ID: a voice is required")
        self.api_key = api_key
        base = cloud.ws_base(url, "IVR_ELEVENLABS_URL")
        query = urlencode({"model_id": model, "output_format": "ulaw_8000", "auto_mode": "true",
                           "sync_alignment": "true", "inactivity_timeout": INACTIVITY_TIMEOUT_S})
        self.url = f"{base}/v1/text-to-speech/{quote(voice_id, safe='')}/multi-stream-input?{query}"
        self.voice_settings = voice_settings or {"stability": 0.5, "similarity_boost": 0.8, "speed": 1.0}
        self.max_contexts = MAX_CONTEXTS
        self.keepalive_s = KEEPALIVE_S
        self.first_audio_timeout_s = FIRST_AUDIO_TIMEOUT_S
        self.settle_s = SETTLE_S
        self.limit = cloud.Limit(PROVIDER, max_sockets, "sockets", "IVR_ELEVENLABS_MAX_SOCKETS")
        self.sockets: list[_Socket] = []
        self._opening = asyncio.Lock()

    async def load(self) -> None:
        """Open the first socket now: a bad key fails at start-up, naming the variable."""
        try:
            async with asyncio.timeout(10):
                await self.socket()
        except cloud.KeyRejected as exc:
            raise ConfigError(str(exc)) from None
        except Exception as exc:
            log.warning("could not reach ElevenLabs at start-up (%s); turns will use the embedded voice until it answers", exc)

    def stream(self) -> "ElevenLabsStream":
        return ElevenLabsStream(self)

    async def socket(self) -> _Socket:
        """A socket with a free context slot (opening one if none has)."""
        async with self._opening:
            for sock in self.sockets:
                if sock.free:
                    return sock
            await self.limit.acquire()
            try:
                ws = await connect(self.url, additional_headers={"xi-api-key": self.api_key},
                                   max_size=2**24, open_timeout=5, ping_interval=20)
            except websockets.InvalidStatus as exc:
                self.limit.release()
                status = exc.response.status_code
                if status in (401, 403):
                    raise cloud.KeyRejected("ElevenLabs", "ELEVENLABS_API_KEY", f"HTTP {status}") from None
                raise
            except BaseException:
                self.limit.release()
                raise
            sock = _Socket(self, ws)
            self.sockets.append(sock)
            return sock

    async def aclose(self) -> None:
        for sock in list(self.sockets):
            await sock.close()


_END = object()


class ElevenLabsStream:
    """One bot turn = one context."""

    def __init__(self, engine: ElevenLabsTts) -> None:
        self.engine = engine
        self.pieces: list[str] = []
        self.aligner = PieceAligner()
        self.context_id = ""
        self.socket: _Socket | None = None
        self.audio_sent = False
        self.ended = False
        self.done = False
        self._out: asyncio.Queue = loopbound.Queue()
        self._opened: asyncio.Future | None = None
        self._asked_at = 0.0
        self._retried = False
        #: close_context went out for the current context (a barge-in): its slot is free at once.
        self._close_sent = False

    @property
    def waiting_for_text(self) -> bool:
        return not self.ended and not self.done

    # --- TtsStream ---------------------------------------------------------------------------

    async def push(self, text: str) -> int:
        if self.ended:
            raise RuntimeError("push() after end() or cancel()")
        index = len(self.pieces)
        self.pieces.append(text)
        self.aligner.add_piece(text)
        await self._ensure_context()
        if self.socket is not None and not self.done:
            # The first piece is flushed so speech starts at once; auto_mode handles the rest.
            await self._send({"text": text.strip() + " ", "context_id": self.context_id, **({"flush": True} if index == 0 else {})})
        return index

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if not self.pieces:
            self._finish()
            return
        await self._send({"text": "", "context_id": self.context_id, "flush": True})

    async def cancel(self) -> None:
        self.ended = True
        if not self.done and self.socket is not None and self.context_id:
            # Barge-in: stop this context; the socket stays for the next turn.
            self._close_sent = True
            await self._send({"context_id": self.context_id, "close_context": True})
        self._finish()
        while not self._out.empty():
            self._out.get_nowait()
        self._out.put_nowait(_END)

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AudioChunk]:
        while True:
            try:
                async with asyncio.timeout(self._wait_limit()):
                    item = await self._out.get()
            except TimeoutError:
                item = self._on_timeout()
                if item is None:
                    continue
            if item is _END:
                self._out.put_nowait(_END)
                return
            if isinstance(item, TtsFailed):
                self._out.put_nowait(_END)
                raise item
            yield item

    # --- context life ------------------------------------------------------------------------

    async def _ensure_context(self) -> None:
        if self.context_id or self.done:
            return
        self.context_id = uuid.uuid4().hex
        self._close_sent = False
        self._asked_at = time.monotonic()
        try:
            sock = await self.engine.socket()
        except cloud.KeyRejected as exc:
            cloud.error(PROVIDER, "auth")
            log.error("%s", exc)
            self._fail(str(exc))
            return
        except Exception as exc:
            cloud.error(PROVIDER, "connect")
            self._fail(f"cannot reach ElevenLabs: {type(exc).__name__}: {exc}")
            return
        self.socket = sock
        sock.contexts[self.context_id] = self
        await self._send({"text": " ", "context_id": self.context_id, "voice_settings": self.engine.voice_settings})

    async def _send(self, message: dict) -> None:
        sock = self.socket
        if sock is None:
            return
        try:
            await sock.send(message)
        except Exception as exc:
            self.on_failure(f"ElevenLabs send failed: {type(exc).__name__}")

    def _wait_limit(self) -> float | None:
        if self.done:
            return None
        if not self.audio_sent and self.context_id and self.pieces:
            return max(0.01, self._asked_at + self.engine.first_audio_timeout_s - time.monotonic())
        if self.ended and self.audio_sent:
            return self.engine.settle_s
        return None

    def _on_timeout(self) -> Any:
        if not self.audio_sent:
            self.on_failure(f"no audio from ElevenLabs within {self.engine.first_audio_timeout_s:.1f} s")
            return None
        self._complete()  # flushed and quiet: the audio is complete
        return None

    def on_message(self, msg: dict) -> None:
        if self.done:
            return
        audio_b64 = msg.get("audio")
        if audio_b64:
            audio = base64.b64decode(audio_b64)
            if not self.audio_sent:
                self.audio_sent = True
                cloud.observe_first(PROVIDER, self._asked_at)
            alignment = msg.get("alignment") or msg.get("normalizedAlignment") or msg.get("normalized_alignment")
            for part in self.aligner.split(audio, alignment):
                if part.audio or part.last:
                    self._out.put_nowait(AudioChunk(part.piece, part.audio, RATE, "ulaw", part.last, part.words))
            if self.ended and self.aligner.complete:
                self._complete()
        if msg.get("isFinal") or msg.get("is_final"):
            self._complete()

    def _complete(self) -> None:
        if self.done:
            return
        for piece in range(self.aligner.current, len(self.pieces)):
            self._out.put_nowait(AudioChunk(piece, b"", RATE, "ulaw", True))
        self._out.put_nowait(_END)
        self._finish()

    def on_failure(self, reason: str) -> None:
        if self.done:
            return
        if not self.audio_sent and not self._retried:
            self._retried = True
            log.warning("%s; retrying the turn on a fresh context", reason)
            cloud.error(PROVIDER, "retry")
            self._detach()
            self.context_id = ""
            asyncio.get_running_loop().create_task(self._retry())
            return
        self._fail(reason)

    async def _retry(self) -> None:
        await self._ensure_context()
        for i, text in enumerate(self.pieces):
            await self._send({"text": text.strip() + " ", "context_id": self.context_id, **({"flush": True} if i == 0 else {})})
        if self.ended and self.pieces:
            await self._send({"text": "", "context_id": self.context_id, "flush": True})

    def _fail(self, reason: str) -> None:
        if self.done:
            return
        cloud.error(PROVIDER, "stream")
        self._out.put_nowait(TtsFailed(reason, self.audio_sent))
        self._finish()

    def _detach(self) -> None:
        sock, cid = self.socket, self.context_id
        if sock is None:
            return
        self.socket = None
        if sock.closed or self._close_sent:
            sock.detach(cid)
            return
        # Free the context slot once close_context is on the wire, not before: a turn that took
        # the slot at once could start its context ahead of it, a sixth on the socket, which
        # the service closes (1008) with every turn on it. Audio still in flight for this
        # context is dropped by the socket meanwhile.
        asyncio.get_running_loop().create_task(_close_then_free(sock, cid))

    def _finish(self) -> None:
        self.done = True
        self._detach()


async def _close_then_free(sock: _Socket, cid: str) -> None:
    with contextlib.suppress(Exception):
        await sock.send({"context_id": cid, "close_context": True})
    sock.detach(cid)


# --- the fallback to the embedded voice ------------------------------------------------------------


class FallbackTts:
    """ElevenLabs first; the embedded TTS when it fails (for the turn, then for `cooloff_s`).

    Whether the cloud voice is down is its `health` (ivr.providers.health), as for the
    recogniser and the brain; with no embedded voice installed (`backup` None) a failed turn
    stays failed and the server reports not ready until the cool-off is over.
    """

    def __init__(self, primary: ElevenLabsTts, backup: Callable[[], TextToSpeech] | None, cooloff_s: float = 60.0,
                 provider: str = PROVIDER, name: str = "ElevenLabs", preload: bool = False) -> None:
        # provider/name: the other cloud voices (ivr.providers.http_tts) reuse this fallback.
        self.provider, self.name = provider, name
        self.primary = primary
        # Its audio is resampled to 8 kHz: the filter is designed with it, off the event loop.
        self.stand_in: StandIn[TextToSpeech] = StandIn("the embedded voice", backup, _prepare_resampler, preload)
        self.health = Health(provider, name, cooloff_s=cooloff_s)
        self.health.on_down.append(self.stand_in.start_loading)
        self.health.stand_in("the embedded voice speaks" if backup is not None else None, "turns go unspoken")
        self.sample_rate = primary.sample_rate
        self.encoding = primary.encoding

    @property
    def has_backup(self) -> bool:
        return self.stand_in.available

    async def load(self) -> None:
        await self.primary.load()
        if self.has_backup and self.stand_in.preload:
            await self.stand_in.ready()

    def stream(self) -> TtsStream:
        if not self.health.up and self.has_backup:
            cloud.fallback(self.provider)
            if self.stand_in.loaded:
                return self.stand_in.engine.stream()
            return _StandInStream(self.stand_in)
        return _FallbackStream(self)

    def tripped(self, reason: str) -> None:
        self.health.failed(reason)

    def unready(self) -> str | None:
        return unready(self.health, self.has_backup, "embedded voice")


class _FallbackStream:
    def __init__(self, owner: FallbackTts) -> None:
        self.owner = owner
        self.inner: Any = owner.primary.stream()
        self.on_backup = False
        self.heard_from_primary = False
        self.pieces: list[str] = []
        self.finished: set[int] = set()
        self.mapping: list[int] = []  # inner index -> our index
        self.ended = False

    async def push(self, text: str) -> int:
        index = len(self.pieces)
        self.pieces.append(text)
        self.mapping.append(index)
        await self.inner.push(text)
        return index

    async def end(self) -> None:
        self.ended = True
        await self.inner.end()

    async def cancel(self) -> None:
        self.ended = True
        await self.inner.cancel()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AudioChunk]:
        while True:
            try:
                async for chunk in self.inner:
                    if not self.on_backup and not self.heard_from_primary:
                        self.heard_from_primary = True
                        self.owner.health.succeeded()
                    piece = self.mapping[chunk.piece]
                    if chunk.last:
                        self.finished.add(piece)
                    yield AudioChunk(piece, chunk.audio, chunk.sample_rate, chunk.encoding, chunk.last, chunk.words)
                return
            except TtsFailed as exc:
                if self.on_backup:
                    raise
                self.owner.tripped(str(exc))
                if not self.owner.has_backup:
                    raise
                cloud.fallback(self.owner.provider)
                await self._switch()

    async def _switch(self) -> None:
        """Say what is left of the turn with the embedded voice (a piece cut midway, again whole)."""
        self.on_backup = True
        self.inner = (await self.owner.stand_in.ready()).stream()
        self.mapping = []
        for index, text in enumerate(self.pieces):
            if index not in self.finished:
                self.mapping.append(index)
                await self.inner.push(text)
        if self.ended:
            await self.inner.end()


async def _prepare_resampler(voice: TextToSpeech) -> None:
    if getattr(voice, "encoding", "pcm16") != "ulaw":
        await asyncio.to_thread(prepare_resampler, voice.sample_rate, 8000)


class _StandInStream:
    """The stand-in voice's stream for a turn that begins while the stand-in is still loading:
    the text waits here, and the audio comes once the voice is loaded."""

    def __init__(self, stand_in: StandIn[TextToSpeech]) -> None:
        self._stand_in = stand_in
        self._inner: Any = None
        self._pending: list[str] = []
        self._ended = self._cancelled = False

    async def push(self, text: str) -> int:
        if self._inner is not None:
            return await self._inner.push(text)
        self._pending.append(text)
        return len(self._pending) - 1

    async def end(self) -> None:
        self._ended = True
        if self._inner is not None:
            await self._inner.end()

    async def cancel(self) -> None:
        self._cancelled = self._ended = True
        if self._inner is not None:
            await self._inner.cancel()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AudioChunk]:
        voice = await self._stand_in.ready()
        if self._cancelled:
            return
        self._inner = voice.stream()
        for text in self._pending:
            await self._inner.push(text)
        if self._ended:
            await self._inner.end()
        async for chunk in self._inner:
            yield chunk


def from_settings(settings: Settings, backup: Callable[[], TextToSpeech] | None) -> FallbackTts:
    key = cloud.require_key(settings.elevenlabs_api_key, "ElevenLabs", "ELEVENLABS_API_KEY", "IVR_TTS=elevenlabs")
    primary = ElevenLabsTts(key, settings.elevenlabs_voice_id, settings.elevenlabs_model, settings.elevenlabs_url,
                            settings.elevenlabs_max_sockets)
    if settings.elevenlabs_cooloff_s < 0:
        raise ConfigError("IVR_ELEVENLABS_COOLOFF_S: cannot be negative")
    return FallbackTts(primary, backup, settings.elevenlabs_cooloff_s, preload=settings.stand_ins == "preload")
