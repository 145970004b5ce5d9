"""A fake of OpenAI's speech endpoint (`POST /v1/audio/speech`) and of compatible servers.

Faithful to what the adapter relies on: Bearer auth (401 with OpenAI's `{"error": {...}}` body),
`response_format="pcm"` as 24 kHz 16-bit mono with no header, streamed in chunks as it is
"generated"; `stream_format="sse"` as `data: {"type": "speech.audio.delta", "audio": base64}`
events and a final `speech.audio.done` with usage. Compatible-server variants: `info=True` sends a
`speech.audio.info` event first (sample rate, channels, bits), `wav=True` prefixes a streamed WAV
header (data size 0xFFFFFFFF), and `streaming_strategy`/`streaming_chunk_size` are recorded.

Audio: each word a tone burst, each space a short silence, at `chars_per_second`; chunks have odd
byte counts on purpose (samples split across chunks, as on a real network). `pace` > 0 sends at
that multiple of real time, so a barge-in can catch a request still streaming.

Faults, each for the next N requests: `statuses` (answer with these HTTP statuses, e.g. 401, 429,
500), `cut_after_audio` (the connection drops after the first chunk), `malformed_sse` (a broken
event after the first delta). Every request's `Speech` record says whether the client hung up
before the end (`disconnected`), which is how a barge-in is seen from the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

CHUNK_MS = 100


@dataclass
class Speech:
    """One synthesis request as the server saw it."""

    body: dict
    headers: dict
    received_at: float = field(default_factory=time.monotonic)
    first_byte_at: float | None = None
    audio_bytes: int = 0
    completed: bool = False
    disconnected: bool = False
    finished: bool = False  # the response is over, whichever way


def render(text: str, rate: int, cps: float, level: int = 6000) -> np.ndarray:
    """Int16 samples: tone bursts for words, silence for spaces."""
    per_char = int(rate / cps)
    out = []
    word = 0
    t = np.arange(per_char) / rate
    for ch in text:
        if ch.isspace():
            out.append(np.zeros(per_char, dtype=np.int16))
            word += 1
        else:
            hz = (180.0, 220.0, 260.0)[word % 3]
            out.append((level * np.sin(2 * math.pi * hz * t)).astype(np.int16))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


class DisconnectAware(StreamingResponse):
    """A streamed response that always listens for the client going away and records it.

    Starlette stops listening for `http.disconnect` under ASGI 2.4 servers and relies on a failed
    send instead, which a paced stream may not attempt for a while; a fake must see the hang-up.
    """

    def __init__(self, content, record: Speech, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.record = record

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:
            async def stream() -> None:
                try:
                    await self.stream_response(send)
                finally:
                    group.cancel_scope.cancel()

            async def listen() -> None:
                await self.listen_for_disconnect(receive)
                self.record.disconnected = not self.record.completed
                group.cancel_scope.cancel()

            group.start_soon(stream)
            group.start_soon(listen)
        self.record.finished = True


def error_body(status: int) -> dict:
    kinds = {401: ("invalid_api_key", "Incorrect API key provided."),
             429: ("rate_limit_exceeded", "Rate limit reached for requests."),
             400: ("invalid_request_error", "Invalid request."),
             500: ("server_error", "The server had an error while processing your request.")}
    code, message = kinds.get(status, ("error", f"HTTP {status}"))
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


class FakeOpenAITts:
    def __init__(self, api_key: str = "sk-test", chars_per_second: float = 16.0, pace: float = 0.0,
                 first_byte_delay_s: float = 0.0, info: bool = False, wav: bool = False,
                 voices: tuple[str, ...] = ("alloy", "coral", "af_bella")) -> None:
        self.api_key = api_key
        self.chars_per_second = chars_per_second
        self.pace = pace
        self.first_byte_delay_s = first_byte_delay_s
        self.info, self.wav = info, wav
        self.voices = voices
        self.statuses: list[int] = []
        self.cut_after_audio = 0
        self.malformed_sse = 0
        self.requests: list[Speech] = []
        #: False: a compatible server without `GET /v1/models` (404), as some local ones are.
        self.lists_models = True
        self.app = Starlette(routes=[Route("/v1/audio/speech", self.speech, methods=["POST"]),
                                     Route("/v1/models", self.models, methods=["GET"])])

    def disconnected(self) -> list[Speech]:
        return [r for r in self.requests if r.disconnected]

    def texts(self) -> list[str]:
        return [r.body.get("input", "") for r in self.requests]

    async def models(self, request: Request):
        if not self.lists_models:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(error_body(401), status_code=401)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "system"}
                                                        for m in ("gpt-4o-mini-tts", "tts-1")]})

    async def speech(self, request: Request):
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse(error_body(401), status_code=401)
        body = await request.json()
        record = Speech(body, dict(request.headers))
        self.requests.append(record)
        if self.statuses:
            status = self.statuses.pop(0)
            record.finished = True
            return JSONResponse(error_body(status), status_code=status)
        if body.get("voice") not in self.voices or not body.get("input") or body.get("response_format") != "pcm":
            record.finished = True
            return JSONResponse(error_body(400), status_code=400)
        sse = body.get("stream_format") == "sse"
        cut = self._take("cut_after_audio")
        malformed = sse and self._take("malformed_sse")
        audio = render(body["input"], 24000, self.chars_per_second).astype("<i2").tobytes()
        if self.wav:
            audio = _wav_header(24000) + audio
        chunks = _odd_chunks(audio, 24000 * 2 * CHUNK_MS // 1000)
        gen = self._sse(record, chunks, cut, malformed) if sse else self._raw(record, chunks, cut)
        return DisconnectAware(gen, record, media_type="text/event-stream" if sse else "application/octet-stream")

    def _take(self, name: str) -> bool:
        n = getattr(self, name)
        if n:
            setattr(self, name, n - 1)
        return bool(n)

    async def _paced(self, record: Speech, chunks: list[bytes]) -> AsyncIterator[bytes]:
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        for chunk in chunks:
            if record.first_byte_at is None:
                record.first_byte_at = time.monotonic()
            record.audio_bytes += len(chunk)
            yield chunk
            if self.pace:
                await asyncio.sleep(CHUNK_MS / 1000 / self.pace)

    async def _raw(self, record: Speech, chunks: list[bytes], cut: bool) -> AsyncIterator[bytes]:
        async for chunk in self._paced(record, chunks):
            yield chunk
            if cut:
                await asyncio.sleep(0.05)  # let the chunk reach the client before the connection drops
                raise ConnectionAbortedError("fake: connection cut mid-audio")
        record.completed = True

    async def _sse(self, record: Speech, chunks: list[bytes], cut: bool, malformed: bool) -> AsyncIterator[bytes]:
        if self.info:
            yield _event({"type": "speech.audio.info", "sample_rate": 24000, "channels": 1, "bits": 16})
        async for chunk in self._paced(record, chunks):
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()})
            if malformed:
                yield b'data: {"type": "speech.audio.delta", "audio": "%%not base64%%"\n\n'
                malformed = False
            if cut:
                await asyncio.sleep(0.05)
                raise ConnectionAbortedError("fake: connection cut mid-audio")
        yield _event({"type": "speech.audio.done", "usage": {"input_tokens": 10, "output_tokens": 50, "total_tokens": 60}})
        record.completed = True


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _odd_chunks(data: bytes, size: int) -> list[bytes]:
    # One byte more than a whole number of samples: the client must carry half samples over.
    size += 1
    return [data[i:i + size] for i in range(0, len(data), size)]


def _wav_header(rate: int) -> bytes:
    fmt = (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little") \
        + (rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return b"RIFF" + b"\xff\xff\xff\xff" + b"WAVE" + b"fmt " + (16).to_bytes(4, "little") + fmt \
        + b"data" + b"\xff\xff\xff\xff"

