"""A fake of ElevenLabs' multi-context text-to-speech WebSocket (`multi-stream-input`).

Audio is real 8 kHz mu-law (`output_format=ulaw_8000`): each word is a tone burst, each space a
short silence, at `chars_per_second`, so a harness hears speech-shaped audio and the engine's
framing and marks work on real bytes. Every audio message carries `alignment` and
`normalizedAlignment` (chars, `charStartTimesMs`, `charDurationsMs`, relative to the chunk) and
`contextId`, as `AudioOutputMulti` in the elevenlabs SDK (2.78) spells them. Generation starts on
`flush` (or per text message with `auto_mode=true`); `close_context` stops a context at once and
is answered with `{"isFinal": true, "contextId"}`; at most 5 contexts per socket (a sixth closes
the socket with 1008); an unknown voice or a bad `xi-api-key` fails the upgrade.

`pace` > 0 sends audio at that multiple of real time (1.0: a chunk every chunk-length), so a
barge-in can catch a context still generating. Faults: `fail_before_audio` (the next N contexts
get an error and their socket closes before any audio), `fail_after_audio` (the next N contexts'
sockets are cut after their first chunk). `first_audio_delay_s` delays each context's first audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from websockets.datastructures import Headers
from websockets.http11 import Response

from ivr.audio import pcm16_to_ulaw

try:
    from fakes.wsserver import ThreadedServer
except ImportError:  # pragma: no cover (run as a script)
    from wsserver import ThreadedServer  # type: ignore

CHUNK_MS = 250


def _tone_table(hz: float) -> bytes:
    n = 8000
    pcm = struct.pack(f"<{n}h", *(int(6000 * math.sin(2 * math.pi * hz * i / 8000)) for i in range(n)))
    return pcm16_to_ulaw(pcm)


TONES = [_tone_table(hz) for hz in (180.0, 220.0, 260.0)]


@dataclass
class Context:
    id: str
    buffered: str = ""
    flushed: bool = False
    closed: bool = False
    closed_early: bool = False
    generating: int = 0
    texts: list[str] = field(default_factory=list)
    audio_bytes: int = 0
    first_text_at: float | None = None
    first_audio_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FakeElevenLabs:
    def __init__(self, api_key: str = "el-test-key", voice_id: str = "voice-test", chars_per_second: float = 16.0,
                 pace: float = 0.0, first_audio_delay_s: float = 0.0) -> None:
        self.api_key = api_key
        self.voice_id = voice_id
        self.chars_per_second = chars_per_second
        self.pace = pace
        self.first_audio_delay_s = first_audio_delay_s
        self.fail_before_audio = 0
        self.fail_after_audio = 0
        self.reject_key = False
        self.contexts: dict[str, Context] = {}
        self.sockets = 0
        self.queries: list[dict] = []
        self.server = ThreadedServer(self._handle, self._check_request)

    def __enter__(self) -> "FakeElevenLabs":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def closed_early(self) -> list[Context]:
        """Contexts closed while they still had audio to make (barge-ins)."""
        return [c for c in self.contexts.values() if c.closed_early]

    # --- handshake ---------------------------------------------------------------------------------

    def _check_request(self, connection, request):
        url = urlparse(request.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v1", "text-to-speech"] or parts[3] != "multi-stream-input":
            return _error(404, "Not Found")
        if self.reject_key or request.headers.get("xi-api-key") != self.api_key:
            return _error(401, "invalid_api_key")
        if parts[2] != self.voice_id:
            return _error(404, "voice_not_found")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if query.get("output_format") != "ulaw_8000":
            return _error(400, "this fake makes ulaw_8000 only")
        if query.get("model_id") == "eleven_v3":
            return _error(400, "eleven_v3 is not available over WebSocket")
        return None

    # --- one socket --------------------------------------------------------------------------------

    async def _handle(self, ws) -> None:
        self.sockets += 1
        query = {k: v[-1] for k, v in parse_qs(urlparse(ws.request.path).query).items()}
        self.queries.append(query)
        auto = query.get("auto_mode") == "true"
        mine: dict[str, Context] = {}
        tasks: set[asyncio.Task] = set()
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("close_socket"):
                    break
                cid = msg.get("context_id") or "default"
                ctx = mine.get(cid)
                if msg.get("close_context"):
                    if ctx is not None and not ctx.closed:
                        ctx.closed = True
                        ctx.closed_early = bool(ctx.buffered.strip()) or ctx.generating > 0
                        await ws.send(json.dumps({"isFinal": True, "contextId": cid}))
                    continue
                if ctx is None:
                    if msg.get("text") != " ":
                        await ws.send(json.dumps({"error": "invalid_request", "message": "a context starts with text ' '",
                                                  "code": 1008, "contextId": cid}))
                        continue
                    if sum(not c.closed for c in mine.values()) >= 5:
                        await ws.close(1008, "max_active_conversations: at most 5 contexts per connection")
                        return
                    ctx = mine[cid] = self.contexts[cid] = Context(cid)
                    if self.fail_before_audio:
                        self.fail_before_audio -= 1
                        await ws.send(json.dumps({"error": "internal_error", "message": "synthesis failed", "code": 1011}))
                        await ws.close(1011, "internal error")
                        return
                    continue
                text = msg.get("text", "")
                if text:
                    if ctx.first_text_at is None:
                        ctx.first_text_at = time.monotonic()
                    ctx.texts.append(text)
                    ctx.buffered += text
                if (msg.get("flush") or auto) and ctx.buffered.strip() and not ctx.closed:
                    chunk_text, ctx.buffered = ctx.buffered, ""
                    ctx.generating += 1
                    task = asyncio.create_task(self._generate(ws, ctx, chunk_text))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except Exception:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async def _generate(self, ws, ctx: Context, text: str) -> None:
        # A context speaks its text in order: one generation at a time.
        async with ctx.lock:
            await self._generate_locked(ws, ctx, text)

    async def _generate_locked(self, ws, ctx: Context, text: str) -> None:
        try:
            if ctx.first_audio_at is None and self.first_audio_delay_s:
                await asyncio.sleep(self.first_audio_delay_s)
            audio, chars, starts, durs = _render(text, self.chars_per_second)
            step = CHUNK_MS * 8
            # Paced against the start, not chunk by chunk: sleeps that overrun on a busy machine
            # must not add up, or a client playing in real time runs dry mid-sentence.
            started = time.monotonic()
            for at in range(0, len(audio), step):
                if ctx.closed:
                    return
                lo, hi = at // 8, (at + step) // 8
                idx = [i for i, s in enumerate(starts) if lo <= s < hi]
                alignment = {"chars": [chars[i] for i in idx], "charStartTimesMs": [starts[i] - lo for i in idx],
                             "charDurationsMs": [durs[i] for i in idx]}
                await ws.send(json.dumps({"audio": base64.b64encode(audio[at:at + step]).decode(), "isFinal": None,
                                          "normalizedAlignment": alignment, "alignment": alignment, "contextId": ctx.id}))
                if ctx.first_audio_at is None:
                    ctx.first_audio_at = time.monotonic()
                    if self.fail_after_audio:
                        self.fail_after_audio -= 1
                        # Let the chunk reach the client first: abort() drops unsent bytes, and
                        # a reset can discard what the client has not read yet.
                        while ws.transport.get_write_buffer_size():
                            await asyncio.sleep(0.001)
                        await asyncio.sleep(0.2)
                        ws.transport.abort()
                        return
                ctx.audio_bytes += len(audio[at:at + step])
                if self.pace:
                    due = started + (at + step) / 8 / 1000 / self.pace
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            ctx.generating -= 1


def _render(text: str, cps: float) -> tuple[bytes, list[str], list[int], list[int]]:
    """Tone bursts for words, silence for spaces; per-character times in ms."""
    ms_per_char = int(1000 / cps)
    nbytes = ms_per_char * 8
    out = bytearray()
    chars, starts, durs = [], [], []
    word = 0
    for ch in text:
        chars.append(ch)
        starts.append(len(out) // 8)
        durs.append(ms_per_char)
        if ch.isspace():
            out += b"\xff" * nbytes
            word += 1
        else:
            table = TONES[word % len(TONES)]
            offset = (len(out)) % (len(table) - nbytes)
            out += table[offset:offset + nbytes]
    return bytes(out), chars, starts, durs


def _error(status: int, message: str) -> Response:
    body = json.dumps({"detail": {"status": message, "message": message}}).encode()
    return Response(status, "", Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))]), body)


if __name__ == "__main__":  # python tests/fakes/elevenlabs.py --port P (benchmarks)
    import argparse
    import gc
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="el-test-key")
    parser.add_argument("--voice", default="voice-test")
    parser.add_argument("--first-audio-delay-ms", type=float, default=0)
    parser.add_argument("--pace", type=float, default=0)
    parser.add_argument("--timings", help="write each context's first text and audio times (monotonic s) here on exit")
    args = parser.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    fake = FakeElevenLabs(args.key, args.voice, pace=args.pace, first_audio_delay_s=args.first_audio_delay_ms / 1000)
    fake.server._port = args.port
    with fake:
        gc.freeze()  # short collector passes: its pauses would count as the server's time
        print(fake.url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    if args.timings:
        with open(args.timings, "w") as f:
            json.dump({"contexts": [{"id": c.id, "first_text_at": c.first_text_at, "first_audio_at": c.first_audio_at}
                                    for c in fake.contexts.values()]}, f)
