"""OpenAI speech (`audio.speech`) and OpenAI-compatible TTS servers, streamed as generated.

`response_format="pcm"` is 24 kHz 16-bit mono with no header, read with the SDK's
`with_streaming_response` as it arrives; chunks go out as `encoding="pcm16", sample_rate=24000`
and the engine's `PhoneEncoder` resamples them to 8 kHz mu-law frame by frame.

Self-hosted servers that speak this API (Kokoro-FastAPI, Chatterbox and others) differ in small
ways, all accepted: `OPENAI_TTS_STREAM_FORMAT=sse` asks for `stream_format: "sse"` and reads
`speech.audio.delta` (base64 audio), `speech.audio.done` and, when sent, `speech.audio.info`
(sample rate, channels, bits); a stream that begins with a WAV header sets its own format; and
their chunking options (`streaming_strategy`, `streaming_chunk_size`) pass through when set.

The SDK's own retries (2, with back-off) and 600 s timeout are off: `ivr.providers.http_tts`
decides, with a caller waiting.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import Any, AsyncIterator, Callable

from ivr.config import ConfigError, Settings
from ivr.providers import cloud
from ivr.providers.base import TextToSpeech
from ivr.providers.elevenlabs import FallbackTts
from ivr.providers.http_tts import Fatal, HttpTts, PcmDecoder, Retryable

log = logging.getLogger("ivr.tts.openai")

PROVIDER = "openai_tts"
RATE = 24000
STREAM_FORMATS = ("audio", "sse")
STRATEGIES = ("sentence", "paragraph", "fixed", "word")


class MalformedEvent(Exception):
    pass


class OpenAITts(HttpTts):
    provider = PROVIDER
    name = "OpenAI"
    sample_rate = RATE
    encoding = "pcm16"

    def __init__(self, api_key: str, base_url: str = "https://api.openai.com/v1", model: str = "gpt-4o-mini-tts",
                 voice: str = "alloy", instructions: str = "", stream_format: str = "audio",
                 streaming_strategy: str = "", streaming_chunk_size: int = 0, max_requests: int = 100) -> None:
        import httpx2
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        if stream_format not in STREAM_FORMATS:
            raise ConfigError(f"OPENAI_TTS_STREAM_FORMAT: {stream_format!r} is not audio or sse")
        if streaming_strategy and streaming_strategy not in STRATEGIES:
            raise ConfigError(f"OPENAI_TTS_STREAMING_STRATEGY: {streaming_strategy!r} is not one of {', '.join(STRATEGIES)}")
        if streaming_chunk_size < 0:
            raise ConfigError("OPENAI_TTS_STREAMING_CHUNK_SIZE: cannot be negative")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OPENAI_TTS_BASE_URL: {base_url!r} must start with https:// (or http:// for a local server)")
        if not model or not voice:
            raise ConfigError("OPENAI_TTS_MODEL and OPENAI_TTS_VOICE must not be empty")
        self.model, self.voice, self.instructions, self.stream_format = model, voice, instructions, stream_format
        self.base_url = base_url.rstrip("/")
        self.extra_body: dict[str, Any] = {}
        if streaming_strategy:
            self.extra_body["streaming_strategy"] = streaming_strategy
        if streaming_chunk_size:
            self.extra_body["streaming_chunk_size"] = streaming_chunk_size
        # Idle connections kept for the next turn (cloud.HTTP_KEEPALIVE_S, not the SDK's 5 s).
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=cloud.HTTP_KEEPALIVE_S)
        self.client = AsyncOpenAI(api_key=api_key, base_url=self.base_url, max_retries=0,
                                  timeout=httpx2.Timeout(30.0, connect=3.0),
                                  http_client=DefaultAsyncHttpxClient(limits=limits))
        self.limit = cloud.Limit(PROVIDER, max_requests, "requests", "IVR_OPENAI_TTS_MAX_REQUESTS")

    async def load(self) -> None:
        """List the models once: a bad key fails at start-up, naming the variable. A compatible
        server without `/models`, or one not reachable yet, only gets a warning."""
        import openai

        # The 24 -> 8 kHz filter is designed on first use (about 1 ms): not during the first answer.
        from ivr.audio import PhoneEncoder

        PhoneEncoder(RATE)
        try:
            async with asyncio.timeout(10):
                await self.client.models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ConfigError(str(cloud.KeyRejected("OpenAI", "OPENAI_API_KEY", f"HTTP {exc.status_code}"))) from None
        except Exception as exc:
            log.warning("could not list models at %s at start-up (%s); turns will try anyway", self.client.base_url, exc)

    async def synthesize(self, text: str) -> AsyncIterator[tuple[bytes, int, str]]:
        import openai

        options: dict[str, Any] = {}
        if self.instructions:
            options["instructions"] = self.instructions
        if self.stream_format == "sse":
            options["stream_format"] = "sse"
        if self.extra_body:
            options["extra_body"] = self.extra_body
        decoder = PcmDecoder(RATE)
        try:
            async with self.client.audio.speech.with_streaming_response.create(
                    model=self.model, voice=self.voice, input=text, response_format="pcm", **options) as response:
                if self.stream_format == "sse":
                    async for data in _sse_audio(response.iter_lines(), decoder):
                        yield decoder.push(data), decoder.rate, "pcm16"
                else:
                    async for data in response.iter_bytes():
                        yield decoder.push(data), decoder.rate, "pcm16"
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise cloud.KeyRejected("OpenAI", "OPENAI_API_KEY", f"HTTP {exc.status_code}") from None
        except openai.RateLimitError:
            raise Retryable("rate limited (HTTP 429): raise the account's limit or IVR_OPENAI_TTS_MAX_REQUESTS lower") from None
        except openai.InternalServerError as exc:
            raise Retryable(f"server error (HTTP {exc.status_code})") from None
        except openai.APIStatusError as exc:
            raise Fatal(f"HTTP {exc.status_code}: {_message(exc)} (check OPENAI_TTS_MODEL={self.model}, "
                        f"OPENAI_TTS_VOICE={self.voice})") from None
        except openai.APIConnectionError as exc:
            raise Retryable(f"cannot reach {self.base_url} ({type(exc.__cause__ or exc).__name__})") from None


async def _sse_audio(lines: AsyncIterator[str], decoder: PcmDecoder) -> AsyncIterator[bytes]:
    """The audio bytes of an SSE speech stream; `speech.audio.info` sets the decoder's format."""
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, `event:` names, `:` comments
        raw = line[5:].strip()
        if raw == "[DONE]":
            return
        try:
            event = json.loads(raw)
            kind = event.get("type")
            if kind == "speech.audio.delta":
                audio = event["audio"]
                yield base64.b64decode(audio, validate=True) if audio else b""
            elif kind == "speech.audio.info":
                decoder.set_format(event.get("sample_rate") or event.get("rate"), event.get("channels"),
                                   event.get("bits") or event.get("bits_per_sample"))
            elif kind == "speech.audio.done":
                return
            elif kind == "error" or "error" in event:
                raise MalformedEvent(f"the server reported an error mid-stream: {event.get('error') or event}")
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise MalformedEvent(f"malformed SSE event ({type(exc).__name__}): {raw[:80]!r}") from None
    raise MalformedEvent("the SSE stream ended without speech.audio.done")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(exc)[:200]


def from_settings(settings: Settings, backup: Callable[[], TextToSpeech] | None) -> FallbackTts:
    base_url = settings.openai_tts_base_url.strip() or settings.openai_base_url
    official = "api.openai.com" in base_url
    if official or settings.openai_api_key.strip():
        key = cloud.require_key(settings.openai_api_key, "OpenAI", "OPENAI_API_KEY", "IVR_TTS=openai")
    else:
        key = "none"  # self-hosted compatible servers usually take no key; the SDK insists on one
    primary = OpenAITts(key, base_url, settings.openai_tts_model, settings.openai_tts_voice,
                        settings.openai_tts_instructions, settings.openai_tts_stream_format.strip().lower(),
                        settings.openai_tts_streaming_strategy.strip().lower(), settings.openai_tts_streaming_chunk_size,
                        settings.openai_tts_max_requests)
    if settings.tts_cooloff_s < 0:
        raise ConfigError("IVR_TTS_COOLOFF_S: cannot be negative")
    return FallbackTts(primary, backup, settings.tts_cooloff_s, provider=PROVIDER, name="OpenAI TTS",
                       preload=settings.stand_ins == "preload")
