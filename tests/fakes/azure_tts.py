"""A fake of Azure Speech's REST synthesis (`POST /cognitiveservices/v1`).

Checks what the service checks: `Ocp-Apim-Subscription-Key` (401 otherwise), `Content-Type:
application/ssml+xml`, a known `X-Microsoft-OutputFormat` (this fake makes
`raw-8khz-8bit-mono-mulaw` only; others 400), and well-formed SSML with a `<voice name>` it knows
(400 otherwise). The answer is `audio/basic` mu-law, streamed in chunks (chunked transfer, as the
service does) at `chars_per_second`, paced by `pace` like the OpenAI fake.

Faults for the next N requests: `statuses` (e.g. 401, 429), `cut_after_audio`. Each request's
`Speech` record (from the OpenAI fake) tells whether the client hung up early.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ivr.audio import pcm16_to_ulaw

try:
    from fakes.openai_tts import DisconnectAware, Speech, render
except ImportError:  # pragma: no cover
    from openai_tts import DisconnectAware, Speech, render  # type: ignore

CHUNK_MS = 100
NS = "{http://www.w3.org/2001/10/synthesis}"


class FakeAzureTts:
    def __init__(self, key: str = "az-test-key", voices: tuple[str, ...] = ("en-US-AvaMultilingualNeural",),
                 chars_per_second: float = 16.0, pace: float = 0.0, first_byte_delay_s: float = 0.0) -> None:
        self.key = key
        self.voices = voices
        self.chars_per_second = chars_per_second
        self.pace = pace
        self.first_byte_delay_s = first_byte_delay_s
        self.statuses: list[int] = []
        self.cut_after_audio = 0
        self.requests: list[Speech] = []
        self.app = Starlette(routes=[Route("/cognitiveservices/v1", self.synthesize, methods=["POST"]),
                                     Route("/cognitiveservices/voices/list", self.voice_list, methods=["GET"])])

    def disconnected(self) -> list[Speech]:
        return [r for r in self.requests if r.disconnected]

    def texts(self) -> list[str]:
        return [r.body["text"] for r in self.requests]

    async def voice_list(self, request: Request):
        """`GET /cognitiveservices/voices/list`: the region's voices (the fields ivr reads, and a few
        more as the service sends them)."""
        if request.headers.get("ocp-apim-subscription-key") != self.key:
            return Response(status_code=401)
        return JSONResponse([{"Name": f"Microsoft Server Speech Text to Speech Voice ({v.split('-')[0]}-{v.split('-')[1]}, {v.split('-')[2]})",
                              "DisplayName": v.split("-")[2], "ShortName": v, "Gender": "Female",
                              "Locale": "-".join(v.split("-")[:2]), "SampleRateHertz": "24000",
                              "VoiceType": "Neural", "Status": "GA"} for v in self.voices])

    async def synthesize(self, request: Request):
        if request.headers.get("ocp-apim-subscription-key") != self.key:
            # The service answers a bad key with 401 and an empty body.
            return Response(status_code=401)
        raw = await request.body()
        try:
            root = ET.fromstring(raw)
            voice = root.find(f"{NS}voice")
            text = "".join(voice.itertext()) if voice is not None else ""
            name = voice.get("name") if voice is not None else None
        except ET.ParseError:
            return Response("SSML is not well-formed", status_code=400)
        record = Speech({"text": text, "voice": name, "ssml": raw.decode()}, dict(request.headers))
        record.finished = True
        self.requests.append(record)
        if self.statuses:
            return Response(status_code=self.statuses.pop(0))
        if request.headers.get("content-type") != "application/ssml+xml":
            return Response("Content-Type must be application/ssml+xml", status_code=400)
        if request.headers.get("x-microsoft-outputformat") != "raw-8khz-8bit-mono-mulaw":
            return Response("unsupported output format", status_code=400)
        if name not in self.voices or not text.strip():
            return Response("voice not found", status_code=400)
        record.finished = False
        cut = bool(self.cut_after_audio)
        self.cut_after_audio = max(0, self.cut_after_audio - 1)
        audio = pcm16_to_ulaw(render(text, 8000, self.chars_per_second).astype("<i2").tobytes())
        step = 8 * CHUNK_MS
        chunks = [audio[i:i + step] for i in range(0, len(audio), step)]
        return DisconnectAware(self._stream(record, chunks, cut), record, media_type="audio/basic")

    async def _stream(self, record: Speech, chunks: list[bytes], cut: bool) -> AsyncIterator[bytes]:
        if self.first_byte_delay_s:
            await asyncio.sleep(self.first_byte_delay_s)
        for chunk in chunks:
            if record.first_byte_at is None:
                record.first_byte_at = time.monotonic()
            record.audio_bytes += len(chunk)
            yield chunk
            if cut:
                await asyncio.sleep(0.05)
                raise ConnectionAbortedError("fake: connection cut mid-audio")
            if self.pace:
                await asyncio.sleep(CHUNK_MS / 1000 / self.pace)
        record.completed = True
