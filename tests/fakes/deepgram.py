"""A fake of Deepgram's live transcription WebSocket (`/v1/listen`, and Flux `/v2/listen`).

It cannot recognise speech, so it "recognises" by a scheme the test controls: it finds utterances
by the energy of the mu-law it receives (as Deepgram's own endpointing would find their ends) and
gives each one the next transcript from `script` (or `default_text`). Timing follows the real
service, on the audio clock of each socket: `SpeechStarted` at the onset (`vad_events`), interim
`Results` while the caller speaks (`interim_results`), a final `Results` with `speech_final` once
`endpointing` ms of silence follow the speech, `UtteranceEnd` after `utterance_end_ms`, empty
finals every few seconds of silence, `from_finalize` results for `Finalize`, `Metadata` after
`CloseStream`, and a close for ~10 s without audio or KeepAlive (NET-0001). Message fields follow
the SDK's `ListenV1Results`/`ListenV2TurnInfo` models (deepgram-sdk 7.17); a test validates every
message the fake sends against them.

Faults: `cut_after_ms` drops the socket (no close frame) that much speech into the next utterance;
`reject_key` makes the upgrade fail with 401; `unavailable` with 503 (counted in `refused`);
`down()` stops listening (connections refused, open sockets closed) until `up()` listens again on
the same port; `final_delay_s` delays each final (benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from websockets.datastructures import Headers
from websockets.http11 import Response

from ivr.audio._audioop import audioop

try:  # as a script (benchmarks start the fakes as processes) or as tests' fakes.deepgram
    from fakes.wsserver import ThreadedServer
except ImportError:  # pragma: no cover
    from wsserver import ThreadedServer  # type: ignore

FRAME = 160  # 20 ms at 8 kHz
ENERGY = 400  # RMS (16-bit) above which a 20 ms frame is voiced
SILENT_FINAL_MS = 3000


@dataclass
class Utterance:
    start_ms: int
    last_voiced_ms: int
    text: str = ""
    interims: int = 0
    scripted: bool = False


@dataclass
class Stream:
    """What one socket saw, for assertions."""

    path: str
    query: dict
    audio_bytes: int = 0
    audio_messages: list = field(default_factory=list)  # each audio message's size
    keepalives: int = 0
    finalizes: int = 0
    closed_by_client: bool = False
    sent: list = field(default_factory=list)


class FakeDeepgram:
    def __init__(self, api_key: str = "dg-test-key", script: list[str] | None = None, default_text: str = "hello",
                 final_delay_s: float = 0.0, idle_close_s: float = 10.0) -> None:
        self.api_key = api_key
        self.script: deque[str] = deque(script or [])
        self.default_text = default_text
        self.final_delay_s = final_delay_s
        self.idle_close_s = idle_close_s
        self.cut_after_ms: int | None = None
        self.reject_key = False
        self.unavailable = False
        self.refused = 0
        self.streams: list[Stream] = []
        #: (monotonic time a final with text was sent, its text): for latency benchmarks.
        self.finals_sent: list[tuple[float, str]] = []
        self.server = ThreadedServer(self._handle, self._check_request)

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "FakeDeepgram":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def down(self) -> None:
        """An outage: stop listening (and close the sockets open now) until `up()`."""
        self.server.stop()

    def up(self) -> None:
        """Back: listen again, on the same port."""
        self.server = ThreadedServer(self._handle, self._check_request, port=self.server.port).start()

    def say(self, *texts: str) -> None:
        """Transcripts for the next utterances, in order."""
        self.server.call(lambda: self.script.extend(texts))

    # --- the handshake ---------------------------------------------------------------------------

    def _check_request(self, connection, request):
        path = urlparse(request.path).path
        if path not in ("/v1/listen", "/v2/listen"):
            return self._error(404, "Not Found")
        if self.unavailable:
            self.refused += 1
            return self._error(503, "Service Unavailable")
        auth = request.headers.get("Authorization", "")
        if self.reject_key or auth not in (f"Token {self.api_key}", f"Bearer {self.api_key}"):
            return self._error(401, "Invalid credentials.")
        query = {k: v[-1] for k, v in parse_qs(urlparse(request.path).query).items()}
        if query.get("encoding") not in (None, "mulaw") or query.get("sample_rate", "8000") != "8000":
            return self._error(400, "this fake takes mulaw at 8000 Hz")
        if "model" not in query:
            return self._error(400, "model is required")
        return None

    @staticmethod
    def _error(status: int, message: str) -> Response:
        body = json.dumps({"err_code": "INVALID_AUTH" if status == 401 else "Bad Request", "err_msg": message}).encode()
        return Response(status, "", Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))]), body)

    # --- a socket --------------------------------------------------------------------------------

    async def _handle(self, ws) -> None:
        url = urlparse(ws.request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        stream = Stream(url.path, query)
        self.streams.append(stream)
        session = _Session(self, ws, stream)
        if url.path == "/v2/listen":
            await session.run_flux()
        else:
            await session.run()


class _Session:
    def __init__(self, fake: FakeDeepgram, ws, stream: Stream) -> None:
        self.fake, self.ws, self.stream = fake, ws, stream
        q = stream.query
        self.request_id = str(uuid.uuid4())
        self.interim = q.get("interim_results") == "true"
        self.vad_events = q.get("vad_events") == "true"
        endpointing = q.get("endpointing", "10")
        self.endpointing_ms = None if endpointing == "false" else int(endpointing)
        self.utterance_end_ms = int(q["utterance_end_ms"]) if "utterance_end_ms" in q else None
        self.ms = 0  # audio received on this socket
        self.pending = b""
        self.utt: Utterance | None = None
        self.settled_ms = 0  # end of the last final
        self.last_word_end_ms: int | None = None
        self.utterance_end_due = False
        self.last_activity = time.monotonic()
        self.cut_at: int | None = None
        self.turn_index = 0
        self.sequence = 0

    def _take_text(self, utt: Utterance) -> None:
        # Consumed only when recognised (a final): an utterance cut with its socket is heard again.
        utt.scripted = bool(self.fake.script)
        utt.text = self.fake.script[0] if utt.scripted else self.fake.default_text

    def _recognised(self, utt: Utterance) -> None:
        if utt.scripted and self.fake.script and self.fake.script[0] == utt.text:
            self.fake.script.popleft()
        self.fake.finals_sent.append((time.monotonic(), utt.text))

    async def send(self, message: dict) -> None:
        self.stream.sent.append(message)
        await self.ws.send(json.dumps(message))

    # --- /v1/listen ------------------------------------------------------------------------------

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._idle_watchdog())
        try:
            async for message in self.ws:
                self.last_activity = time.monotonic()
                if isinstance(message, bytes):
                    self.stream.audio_bytes += len(message)
                    self.stream.audio_messages.append(len(message))
                    if await self._audio(message):
                        return
                    continue
                kind = json.loads(message).get("type")
                if kind == "KeepAlive":
                    self.stream.keepalives += 1
                elif kind == "Finalize":
                    self.stream.finalizes += 1
                    await self._final(from_finalize=True, speech_final=False)
                elif kind == "CloseStream":
                    self.stream.closed_by_client = True
                    if self.utt is not None:
                        await self._final(speech_final=True)
                    await self.send({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
                                     "sha256": "0" * 64, "created": "2026-11-01T00:00:00.000Z",
                                     "duration": self.ms / 1000, "channels": 1, "models": [], "model_info": {}})
                    await self.ws.close()
                    return
                else:
                    await self.send({"type": "Error", "variant": "SchemaError",
                                     "description": f"unknown message type {kind!r}", "message": message})
        except Exception:
            pass
        finally:
            watchdog.cancel()

    async def _idle_watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if time.monotonic() - self.last_activity > self.fake.idle_close_s:
                await self.ws.close(1011, "Deepgram did not receive audio data or a text message within the timeout window. See https://dpgr.am/net0001")
                return

    async def _audio(self, data: bytes) -> bool:
        """Process audio; True if the socket was cut."""
        data = self.pending + data
        whole = len(data) - len(data) % FRAME
        self.pending = data[whole:]
        for i in range(0, whole, FRAME):
            voiced = audioop.rms(audioop.ulaw2lin(data[i:i + FRAME], 2), 2) > ENERGY
            self.ms += 20
            if await self._frame(voiced):
                return True
        return False

    async def _frame(self, voiced: bool) -> bool:
        ms = self.ms
        utt = self.utt
        if voiced:
            if utt is None:
                utt = self.utt = Utterance(start_ms=ms - 20, last_voiced_ms=ms)
                self._take_text(utt)
                self.utterance_end_due = False
                if self.fake.cut_after_ms is not None:
                    self.cut_at, self.fake.cut_after_ms = ms + self.fake.cut_after_ms, None
                if self.vad_events:
                    await self.send({"type": "SpeechStarted", "channel": [0, 1], "timestamp": (ms - 20) / 1000})
            utt.last_voiced_ms = ms
        if self.cut_at is not None and ms >= self.cut_at:
            self.ws.transport.abort()  # a cut, not a close: no close frame
            return True
        if utt is not None:
            spoken = utt.last_voiced_ms - utt.start_ms
            if self.interim and spoken // 300 > utt.interims:
                utt.interims = spoken // 300
                words = utt.text.split()
                shown = " ".join(words[: min(len(words) - 1, utt.interims)]) or words[0]
                await self._results(shown, utt.start_ms, ms, is_final=False, speech_final=False)
            if self.endpointing_ms is not None and ms - utt.last_voiced_ms >= self.endpointing_ms:
                await self._final(speech_final=True)
        elif self.utterance_end_due and self.last_word_end_ms is not None and self.utterance_end_ms is not None:
            if ms - self.last_word_end_ms >= self.utterance_end_ms:
                self.utterance_end_due = False
                await self.send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": self.last_word_end_ms / 1000})
        if utt is None and ms - self.settled_ms >= SILENT_FINAL_MS:
            await self._results("", self.settled_ms, ms, is_final=True, speech_final=False)
            self.settled_ms = ms
        return False

    async def _final(self, speech_final: bool, from_finalize: bool = False) -> None:
        utt, self.utt = self.utt, None
        if utt is None:
            await self._results("", self.settled_ms, self.ms, True, speech_final, from_finalize)
            self.settled_ms = self.ms
            return
        if self.fake.final_delay_s:
            await asyncio.sleep(self.fake.final_delay_s)
        end = max(utt.last_voiced_ms, utt.start_ms + 20)
        await self._results(utt.text, utt.start_ms, end, True, speech_final, from_finalize,
                            words=_spread(utt.text, utt.start_ms, end))
        self._recognised(utt)
        self.settled_ms = self.ms
        self.last_word_end_ms = end
        self.utterance_end_due = True

    async def _results(self, text: str, start_ms: int, end_ms: int, is_final: bool, speech_final: bool,
                       from_finalize: bool = False, words: list | None = None) -> None:
        if words is None:
            words = _spread(text, start_ms, end_ms) if text else []
        message = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": (end_ms - start_ms) / 1000,
            "start": start_ms / 1000,
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.98 if text else 0.0, "words": words}]},
            "metadata": {"request_id": self.request_id,
                         "model_info": {"name": "general-nova-3", "version": "2026-01-01", "arch": "nova-3"},
                         "model_uuid": "00000000-0000-0000-0000-000000000003"},
            "from_finalize": from_finalize,
        }
        await self.send(message)

    # --- /v2/listen (Flux) ---------------------------------------------------------------------

    async def run_flux(self) -> None:
        await self.send({"type": "Connected", "request_id": self.request_id, "sequence_id": 0})
        eot_ms = int(float(self.stream.query.get("eot_timeout_ms", 0)) or 0) or 500
        eager = "eager_eot_threshold" in self.stream.query
        try:
            async for message in self.ws:
                if not isinstance(message, bytes):
                    kind = json.loads(message).get("type")
                    if kind == "CloseStream":
                        await self.ws.close()
                        return
                    continue
                data = self.pending + message
                whole = len(data) - len(data) % FRAME
                self.pending = data[whole:]
                for i in range(0, whole, FRAME):
                    voiced = audioop.rms(audioop.ulaw2lin(data[i:i + FRAME], 2), 2) > ENERGY
                    self.ms += 20
                    await self._flux_frame(voiced, eot_ms, eager)
        except Exception:
            pass

    async def _turn_info(self, event: str, utt: Utterance, end_ms: int, text: str) -> None:
        self.sequence += 1
        await self.send({
            "type": "TurnInfo", "request_id": self.request_id, "sequence_id": self.sequence, "event": event,
            "turn_index": self.turn_index, "audio_window_start": utt.start_ms / 1000, "audio_window_end": end_ms / 1000,
            "transcript": text, "words": [{"word": w, "confidence": 0.97} for w in text.split()],
            "end_of_turn_confidence": 0.9 if event == "EndOfTurn" else 0.2,
        })

    async def _flux_frame(self, voiced: bool, eot_ms: int, eager: bool) -> None:
        ms, utt = self.ms, self.utt
        if voiced:
            if utt is None:
                utt = self.utt = Utterance(start_ms=ms - 20, last_voiced_ms=ms)
                self._take_text(utt)
                await self._turn_info("StartOfTurn", utt, ms, "")
            elif utt.interims < 0:  # resumed after an EagerEndOfTurn
                utt.interims = 0
                await self._turn_info("TurnResumed", utt, ms, utt.text)
            utt.last_voiced_ms = ms
            return
        if utt is None:
            return
        silence = ms - utt.last_voiced_ms
        if eager and utt.interims >= 0 and silence >= eot_ms // 2:
            utt.interims = -1
            await self._turn_info("EagerEndOfTurn", utt, utt.last_voiced_ms, utt.text)
        if silence >= eot_ms:
            self.utt = None
            await self._turn_info("EndOfTurn", utt, utt.last_voiced_ms, utt.text)
            self._recognised(utt)
            self.turn_index += 1


def _spread(text: str, start_ms: int, end_ms: int) -> list[dict]:
    words = text.split()
    if not words:
        return []
    step = (end_ms - start_ms) / len(words)
    return [
        {"word": w.strip(".,?!").lower(), "start": (start_ms + i * step) / 1000, "end": (start_ms + (i + 1) * step) / 1000,
         "confidence": 0.98, "punctuated_word": w}
        for i, w in enumerate(words)
    ]


if __name__ == "__main__":  # python tests/fakes/deepgram.py --port P (benchmarks)
    import argparse
    import gc
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="dg-test-key")
    parser.add_argument("--text", default="what time are you open")
    parser.add_argument("--final-delay-ms", type=float, default=0)
    parser.add_argument("--timings", help="write the finals' send times (monotonic s) here on exit")
    args = parser.parse_args()
    # Blocked before the server thread starts, so sigwait (not the default action) takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    fake = FakeDeepgram(args.key, default_text=args.text, final_delay_s=args.final_delay_ms / 1000)
    fake.server._port = args.port
    with fake:
        gc.freeze()  # short collector passes: its pauses would count as the server's time
        print(fake.url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    if args.timings:
        with open(args.timings, "w") as f:
            json.dump({"finals_sent": fake.finals_sent}, f)
