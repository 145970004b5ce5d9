"""Deepgram live speech-to-text over its WebSocket API (`/v1/listen`, `/v2/listen` for Flux).

Twilio's 8 kHz mu-law goes to Deepgram untouched (`encoding=mulaw&sample_rate=8000`). Nova models
use `/v1/listen` with interim results, `endpointing` (a final with `speech_final`) and
`utterance_end_ms` (an `UtteranceEnd` when endpointing misses a noisy end), and `vad_events`,
whose `SpeechStarted` is the engine's barge-in cue. A `flux-*` model uses `/v2/listen`, where the
model itself decides the end of the turn (`TurnInfo` events).

Nothing the caller said may be lost to a dropped socket: every byte sent since the end of the
last final result stays in a `ResendBuffer`; when the socket drops mid-call the session reconnects
and sends that audio again, so the new socket transcribes the sentence from its start. Times on a
new socket start at zero again: `Transcript.offset_ms` shifts them back onto the call's clock.

When Deepgram cannot be reached at all, the engine's `health` (ivr.providers.health) says so
once, and one probe per process retries it; a session that cannot connect either waits for that
probe, or, when an embedded recogniser stands by (`fallback_ready`), gives up and hands it the
audio not yet settled (`unsettled()`). No call retries a dead Deepgram on its own, and no
connection attempt stands between a call and its greeting.

The protocol logic (`Transcript`, `FluxTurns`, `ResendBuffer`) does no I/O and is tested on plain
values; `DeepgramSession` is the asyncio driver around the socket.

Messages are read as the JSON they are (orjson, plain dicts), not through `deepgram-sdk`'s socket
client: its typed parse builds a pydantic model per message, trying the message types in turn
(about 210 us for a final, 140 us for an interim, against 8 us for the JSON), and a final is on
the path of every answer. Its types (`ListenV1Results`, `ListenV1UtteranceEnd`,
`ListenV1SpeechStarted`, `ListenV2TurnInfo`, ...) are the reference for the fields read here, and
the tests check our reading against them. The socket is opened with `websockets` as well: the
SDK's connect() forces permessage-deflate on, and compressing mu-law audio (which does not
compress) took about 6 % of the server's CPU at 60 calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import orjson

from ivr import loopbound
from ivr.config import ConfigError, Settings
from ivr.providers import cloud
from ivr.providers.health import Health
from ivr.providers.base import (
    CallContext,
    EagerEndOfTurn,
    EndOfTurn,
    Final,
    Interim,
    SpeechStarted,
    SttEvent,
    TurnResumed,
    Word,
)
from ivr.wsframes import write_now

log = logging.getLogger("ivr.stt.deepgram")

PROVIDER = "deepgram"
BYTES_PER_MS = 8  # 8 kHz mu-law: one byte a sample
#: Deepgram closes a socket after ~10 s without audio or KeepAlive; we send one after 4 s quiet.
KEEPALIVE_AFTER_S = 4.0
#: Audio kept for a resend however long the caller talks without a final (a minute).
MAX_RESEND_BYTES = 60 * 1000 * BYTES_PER_MS
FINALIZE_WAIT_S = 3.0
RECONNECT_DELAYS_S = (0.0, 0.2, 0.5, 1.0, 2.0)
#: The socket's opening handshake: longer means a dead Deepgram holds a call's audio longer
#: before the fallback hears it (the greeting never waits for it).
CONNECT_TIMEOUT_S = 3.0


# --- pure protocol logic ---------------------------------------------------------------------------


class ResendBuffer:
    """Caller audio since the end of the last final result, by absolute byte position."""

    __slots__ = ("data", "base")

    def __init__(self) -> None:
        self.data = bytearray()
        self.base = 0  # absolute position (bytes since the call's start) of data[0]

    @property
    def end(self) -> int:
        return self.base + len(self.data)

    def append(self, ulaw: bytes) -> None:
        self.data += ulaw
        if len(self.data) > MAX_RESEND_BYTES:
            self.trim_to(self.end - MAX_RESEND_BYTES)

    def trim_to(self, position: int) -> None:
        drop = min(position, self.end) - self.base
        if drop > 0:
            del self.data[:drop]
            self.base += drop

    def since(self, position: int) -> bytes:
        return bytes(self.data[max(0, position - self.base):])


def _ms(seconds: float, offset_ms: int) -> int:
    return offset_ms + int(round(seconds * 1000))


class Transcript:
    """Deepgram `/v1/listen` messages -> our STT events, with turn text across sockets."""

    def __init__(self) -> None:
        self.offset_ms = 0
        self.turn: list[str] = []
        self.turn_end_ms = 0
        self.speech_pending = False
        #: End (call ms) of the last final result: the audio before it is settled.
        self.settled_ms = 0

    def results(self, msg: dict) -> list[SttEvent]:
        alternatives = (msg.get("channel") or {}).get("alternatives") or ()
        best = alternatives[0] if alternatives else {}
        text = (best.get("transcript") or "").strip()
        start_s = msg.get("start") or 0.0
        start = _ms(start_s, self.offset_ms)
        end = _ms(start_s + (msg.get("duration") or 0.0), self.offset_ms)
        out: list[SttEvent] = []
        if not msg.get("is_final"):
            if text:
                out.append(Interim(text, start, end))
            return out
        self.settled_ms = max(self.settled_ms, end)
        if text:
            words = tuple(
                Word(w.get("punctuated_word") or w["word"], _ms(w["start"], self.offset_ms), _ms(w["end"], self.offset_ms),
                     w.get("confidence", 0.0))
                for w in (best.get("words") or ())
            )
            out.append(Final(text, start, end, words))
            self.turn.append(text)
            self.turn_end_ms = words[-1].end_ms if words else end
        if msg.get("speech_final") or msg.get("from_finalize"):
            out += self.end_turn(self.turn_end_ms if self.turn else end)
        return out

    def utterance_end(self, last_word_end: float) -> list[SttEvent]:
        if not self.turn:
            return []  # speech_final already ended this turn
        return self.end_turn(max(self.turn_end_ms, _ms(last_word_end, self.offset_ms)))

    def speech_started(self, timestamp: float) -> list[SttEvent]:
        self.speech_pending = True
        return [SpeechStarted(_ms(timestamp, self.offset_ms))]

    def end_turn(self, at_ms: int) -> list[SttEvent]:
        if not self.turn and not self.speech_pending:
            return []
        # An empty turn after SpeechStarted tells the engine the "speech" held no words.
        event = EndOfTurn(" ".join(self.turn), at_ms)
        self.turn.clear()
        self.speech_pending = False
        return [event]


class FluxTurns:
    """Deepgram Flux (`/v2/listen`) `TurnInfo` messages -> our STT events."""

    def __init__(self) -> None:
        self.offset_ms = 0
        self.settled_ms = 0
        self._turn = -1

    def turn_info(self, msg: dict) -> list[SttEvent]:
        event = msg.get("event")
        text = (msg.get("transcript") or "").strip()
        start = _ms(msg.get("audio_window_start") or 0.0, self.offset_ms)
        end = _ms(msg.get("audio_window_end") or 0.0, self.offset_ms)
        if event == "StartOfTurn":
            self._turn = msg.get("turn_index", self._turn + 1)
            return [SpeechStarted(start)]
        if event == "Update":
            return [Interim(text, start, end)] if text else []
        if event == "EagerEndOfTurn":
            return [EagerEndOfTurn(text, end)]
        if event == "TurnResumed":
            return [TurnResumed(end)]
        if event == "EndOfTurn":
            self.settled_ms = max(self.settled_ms, end)
            # Word times are optional in Flux's TurnInfo; without them a word spans the turn.
            words = tuple(
                Word(w["word"], start if w.get("start") is None else _ms(w["start"], self.offset_ms),
                     end if w.get("end") is None else _ms(w["end"], self.offset_ms), w.get("confidence", 0.0))
                for w in (msg.get("words") or ())
            )
            out: list[Any] = [Final(text, start, end, words)] if text else []
            return out + [EndOfTurn(text, end)]
        return []


# --- the engine and its sessions ---------------------------------------------------------------


class DeepgramStt:
    """The shared engine: the endpoint and its options, a stream limit; a session per call."""

    def __init__(
        self,
        api_key: str,
        url: str = "wss://api.deepgram.com",
        model: str = "nova-3",
        endpointing_ms: int = 300,
        utterance_end_ms: int = 1000,
        eager_eot: float = 0.0,
        max_streams: int = 100,
        chunk_ms: int = 40,
    ) -> None:
        self.url = cloud.ws_base(url, "IVR_DEEPGRAM_URL")
        self._api_key = api_key
        self.model = model
        self.flux = model.startswith("flux")
        if utterance_end_ms and utterance_end_ms < 1000:
            raise ConfigError("IVR_DEEPGRAM_UTTERANCE_END_MS: Deepgram accepts 1000 ms or more")
        if eager_eot and not 0.3 <= eager_eot <= 0.9:
            raise ConfigError("IVR_DEEPGRAM_EAGER_EOT: Flux accepts 0.3 to 0.9 (or 0 for off)")
        if not (20 <= chunk_ms <= 100 and chunk_ms % 20 == 0):
            raise ConfigError("IVR_DEEPGRAM_CHUNK_MS: 20, 40, 60, 80 or 100 (Twilio's frames are 20 ms)")
        #: Audio per message to Deepgram. Twilio's 20 ms frames one by one cost a WebSocket
        #: frame and a send() each, 50 a second per call; in pairs (40 ms, the default) half that,
        #: for at most 20 ms more before Deepgram hears a frame.
        self.chunk_bytes = chunk_ms * BYTES_PER_MS
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.eager_eot = eager_eot
        self.limit = cloud.Limit(PROVIDER, max_streams, "streams", "IVR_DEEPGRAM_MAX_STREAMS")
        self.keepalive_s = KEEPALIVE_AFTER_S
        self.key_rejected: cloud.KeyRejected | None = None
        self.health = Health(PROVIDER, "Deepgram", self.probe)
        self.connect_timeout_s = CONNECT_TIMEOUT_S

    def connect(self) -> Any:
        """An async context manager for one socket (`DeepgramSocket`) with our query parameters."""
        if self.flux:
            params: dict[str, Any] = {"model": self.model, "encoding": "mulaw", "sample_rate": 8000}
            if self.eager_eot:
                params["eager_eot_threshold"] = self.eager_eot
            return _socket(f"{self.url}/v2/listen?{urlencode(params)}", self._api_key, self.connect_timeout_s)
        params = {
            "model": self.model,
            "encoding": "mulaw",
            "sample_rate": 8000,
            "channels": 1,
            "interim_results": "true",
            "endpointing": self.endpointing_ms,
            "vad_events": "true",
            "smart_format": "true",
        }
        if self.utterance_end_ms:
            params["utterance_end_ms"] = self.utterance_end_ms
        return _socket(f"{self.url}/v1/listen?{urlencode(params)}", self._api_key, self.connect_timeout_s)

    async def load(self) -> None:
        """Open and close one socket, so a bad key fails at start-up, naming the variable."""
        try:
            async with asyncio.timeout(10):
                await self.probe()
        except cloud.KeyRejected:
            raise
        except Exception as exc:
            rejected = _rejection(exc)
            if rejected is not None:
                raise ConfigError(str(rejected)) from None
            self.health.failed(f"{self.url} at start-up: {_describe(exc)}")
        else:
            self.health.succeeded()

    async def probe(self) -> None:
        """Is Deepgram there? A socket opened and closed at once (no audio, so nothing billed)."""
        async with self.connect() as conn:
            await conn.send_close_stream()

    async def open(self, call: CallContext | None = None) -> "DeepgramSession":
        await self.limit.acquire()
        session = DeepgramSession(self, call or CallContext())
        session.start()
        return session


class DeepgramSocket:
    """One open socket: audio and control messages out, decoded JSON messages in."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send_media(self, ulaw: bytes) -> None:
        # Every 40 ms of every call: framed and written at once (ivr.wsframes) while the socket
        # keeps up; through send(), which waits for it, when it does not.
        if not write_now(self._ws, ulaw):
            await self._ws.send(ulaw)

    async def send_keep_alive(self) -> None:
        await self._ws.send('{"type": "KeepAlive"}')

    async def send_finalize(self) -> None:
        await self._ws.send('{"type": "Finalize"}')

    async def send_close_stream(self) -> None:
        await self._ws.send('{"type": "CloseStream"}')

    async def send_force_end_turn(self) -> None:  # Flux only
        await self._ws.send('{"type": "ForceEndTurn"}')

    async def __aiter__(self) -> AsyncIterator[dict]:
        async for raw in self._ws:
            if isinstance(raw, bytes):
                continue  # the API sends no binary messages
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("Deepgram sent a message that is not JSON (%.80r); skipped", raw)
                continue
            if isinstance(msg, dict):
                yield msg


@contextlib.asynccontextmanager
async def _socket(url: str, api_key: str, open_timeout: float) -> AsyncIterator[DeepgramSocket]:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Token {api_key}"}, compression=None,
                       open_timeout=open_timeout) as ws:
        yield DeepgramSocket(ws)


def _status(exc: BaseException) -> int | None:
    """The HTTP status of a refused upgrade (websockets' InvalidStatus), else None."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _rejection(exc: BaseException) -> cloud.KeyRejected | None:
    status = _status(exc)
    if status in (401, 403):
        return cloud.KeyRejected("Deepgram", "DEEPGRAM_API_KEY", f"HTTP {status}")
    return None


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    return f"HTTP {status}" if status else (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


_END = object()


class DeepgramSession:
    """One call's stream; survives dropped sockets by reconnecting and resending."""

    def __init__(self, engine: DeepgramStt, call: CallContext) -> None:
        self.engine = engine
        self.call = call
        self.buffer = ResendBuffer()
        #: Absolute position up to which the current socket has the audio.
        self._sent = 0
        self.protocol: Transcript | FluxTurns = FluxTurns() if engine.flux else Transcript()
        self.reconnects = 0
        self._events: asyncio.Queue = loopbound.Queue()
        self._conn: Any = None
        self._connected = loopbound.Event()
        self._closed = False
        self._released = False
        self._last_audio = time.monotonic()
        self._speech_end_at: float | None = None
        self._finalized: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        #: Set by ivr.providers.fallback: when Deepgram cannot be reached, end the iteration with
        #: `cloud.Unreachable` (the fallback takes the call) instead of waiting for it.
        self.fallback_ready = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deepgram-{self.call.call_sid}")

    # --- SttSession ----------------------------------------------------------------------------

    async def send(self, ulaw: bytes) -> None:
        self.buffer.append(ulaw)
        if self.buffer.end - self._sent >= self.engine.chunk_bytes:
            await self._send_pending()

    async def _send_pending(self) -> None:
        """Send the audio the socket does not have yet (a partial chunk too)."""
        conn = self._conn
        end = self.buffer.end
        if conn is None or self._sent >= end:
            return  # kept in the buffer: the next socket gets it
        data = self.buffer.since(self._sent)
        self._sent = end  # claimed before the await: a concurrent call cannot send it twice
        try:
            await conn.send_media(data)
            self._last_audio = time.monotonic()
        except Exception:
            # The reader sees the close and reconnects; this audio is in the buffer.
            self._conn = None

    async def finalize(self) -> None:
        await self._send_pending()  # the caller's last words may still wait for a full chunk
        conn = self._conn
        if conn is None or self.engine.flux:
            if self.engine.flux and conn is not None:
                with contextlib.suppress(Exception):
                    await conn.send_force_end_turn()
            return
        self._finalized = loopbound.Event()
        try:
            await conn.send_finalize()
            async with asyncio.timeout(FINALIZE_WAIT_S):
                await self._finalized.wait()
        except (TimeoutError, Exception) as exc:
            log.info("Deepgram finalize not confirmed (%s); ending the turn with what we have", _describe(exc))
        finally:
            self._finalized = None
        if isinstance(self.protocol, Transcript):
            for event in self.protocol.end_turn(self.protocol.turn_end_ms):
                self._events.put_nowait(event)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._send_pending()
        conn, self._conn = self._conn, None
        if conn is not None:
            # CloseStream ends billing at once and flushes; we do not wait for its results.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await conn.send_close_stream()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._release()
        self._events.put_nowait(_END)

    def unsettled(self) -> tuple[int, bytes]:
        """(where it starts, in ms on this session's clock; the audio) of the caller audio not yet
        settled into a final result: what another recogniser must hear so that nothing is lost."""
        return self.buffer.base // BYTES_PER_MS, bytes(self.buffer.data)

    def __aiter__(self) -> AsyncIterator[SttEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SttEvent]:
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)
                return
            if isinstance(item, cloud.Unreachable):
                self._events.put_nowait(_END)
                raise item
            yield item

    # --- the socket ----------------------------------------------------------------------------

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.engine.limit.release()

    async def _run(self) -> None:
        attempt = 0
        health = self.engine.health
        while not self._closed:
            if not health.up:
                # Known down: the engine's probe tries it, not each call.
                if self.fallback_ready:
                    self._give_up(health.reason)
                    return
                await health.wait_up()
            opened = False
            try:
                async with self.engine.connect() as conn:
                    opened = True
                    attempt = 0
                    health.succeeded()
                    await self._resend(conn)
                    keepalive = asyncio.create_task(self._keepalive(conn))
                    try:
                        async for message in conn:
                            self._handle(message)
                    finally:
                        keepalive.cancel()
                if not self._closed:
                    # INFO: in an outage every call sees this; the engine's health says it once.
                    log.info("[%s] Deepgram closed the stream; reconnecting", self.call.call_sid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                rejected = _rejection(exc)
                if rejected is not None:
                    cloud.error(PROVIDER, "auth")
                    health.failed(str(rejected))
                    if self.fallback_ready:
                        self._give_up(str(rejected))
                        return
                    log.error("[%s] %s; this call cannot be transcribed", self.call.call_sid, rejected)
                    break
                if opened:
                    cloud.error(PROVIDER, "socket")
                    log.info("[%s] Deepgram stream failed (%s); reconnecting and resending %d ms of audio",
                             self.call.call_sid, _describe(exc), len(self.buffer.data) // BYTES_PER_MS)
                else:
                    # Unreachable: said once by the engine's health, not per call and attempt.
                    cloud.error(PROVIDER, "connect")
                    health.failed(_describe(exc))
                    if self.fallback_ready:
                        self._give_up(_describe(exc))
                        return
                    log.debug("[%s] Deepgram not reached (%s); waiting for it with %d ms of audio kept",
                              self.call.call_sid, _describe(exc), len(self.buffer.data) // BYTES_PER_MS)
            finally:
                self._conn = None
            if self._closed:
                break
            delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
            attempt += 1
            if delay:
                await asyncio.sleep(delay)
        self._release()
        if not self._closed:
            self._events.put_nowait(_END)

    def _give_up(self, reason: str) -> None:
        """Hand the call to the fallback: the audio stays in the buffer for `unsettled()`."""
        self._release()
        self._events.put_nowait(cloud.Unreachable(f"Deepgram: {reason}"))

    async def _resend(self, conn: Any) -> None:
        """Send what the buffer holds, then go live; no frame is skipped or sent twice."""
        protocol = self.protocol
        protocol.offset_ms = self.buffer.base // BYTES_PER_MS
        sent = self.buffer.base
        if sent and isinstance(protocol, Transcript):
            protocol.settled_ms = protocol.offset_ms
        if self._connected.is_set() or self.reconnects or sent:
            self.reconnects += 1
            cloud.reconnect(PROVIDER)
            log.info("[%s] Deepgram stream reopened: resending %d ms from %d ms",
                     self.call.call_sid, (self.buffer.end - sent) // BYTES_PER_MS, protocol.offset_ms)
        while sent < self.buffer.end:
            end = self.buffer.end
            await conn.send_media(self.buffer.since(sent))
            sent = end
        # No await between this check and going live: send() appends and sends from here on.
        self._conn = conn
        self._sent = sent
        self._connected.set()
        self._last_audio = time.monotonic()

    async def _keepalive(self, conn: Any) -> None:
        if self.engine.flux:
            return  # Flux has no KeepAlive message; Twilio's audio never stops while a call lasts
        every = self.engine.keepalive_s
        while True:
            await asyncio.sleep(every / 2)
            if time.monotonic() - self._last_audio >= every:
                with contextlib.suppress(Exception):
                    await conn.send_keep_alive()
                    self._last_audio = time.monotonic()

    def _handle(self, msg: dict) -> None:
        kind = msg.get("type")
        protocol = self.protocol
        try:
            if kind == "Results" and isinstance(protocol, Transcript):
                events = protocol.results(msg)
                if msg.get("is_final") and msg.get("from_finalize") and self._finalized is not None:
                    self._finalized.set()
            elif kind == "UtteranceEnd" and isinstance(protocol, Transcript):
                events = protocol.utterance_end(msg["last_word_end"])
            elif kind == "SpeechStarted" and isinstance(protocol, Transcript):
                events = protocol.speech_started(msg["timestamp"])
            elif kind == "TurnInfo" and isinstance(protocol, FluxTurns):
                events = protocol.turn_info(msg)
            elif kind in ("Error", "FatalError", "Warning", "ConfigureFailure"):
                cloud.error(PROVIDER, "message")
                log.warning("[%s] Deepgram %s: %s", self.call.call_sid, kind, msg.get("description") or msg.get("message", ""))
                return
            else:
                return  # Metadata, Connected, unknown messages
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            cloud.error(PROVIDER, "message")
            log.warning("[%s] Deepgram %s message not as documented (%s: %s); skipped",
                        self.call.call_sid, kind, type(exc).__name__, exc)
            return
        # Audio before the last final is settled: a resend starts after it.
        self.buffer.trim_to(protocol.settled_ms * BYTES_PER_MS)
        for event in events:
            if isinstance(event, SpeechStarted):
                self._speech_end_at = None
            elif isinstance(event, EndOfTurn) and event.text:
                # Deepgram's delay: from the audio where speech ended reaching it to the decision.
                lag_ms = (self.buffer.end // BYTES_PER_MS) - event.at_ms
                cloud.metrics.PROVIDER_FIRST_SECONDS.labels(PROVIDER).observe(max(0, lag_ms) / 1000)
            self._events.put_nowait(event)


def from_settings(settings: Settings) -> DeepgramStt:
    key = cloud.require_key(settings.deepgram_api_key, "Deepgram", "DEEPGRAM_API_KEY", "IVR_STT=deepgram")
    if settings.deepgram_endpointing_ms < 10:
        raise ConfigError("IVR_DEEPGRAM_ENDPOINTING_MS: at least 10 ms")
    return DeepgramStt(
        key,
        url=settings.deepgram_url,
        model=settings.deepgram_model,
        endpointing_ms=settings.deepgram_endpointing_ms,
        utterance_end_ms=settings.deepgram_utterance_end_ms,
        eager_eot=settings.deepgram_eager_eot,
        max_streams=settings.deepgram_max_streams,
        chunk_ms=settings.deepgram_chunk_ms,
    )
