"""Azure Speech text-to-speech over REST, streamed by chunks with httpx.

`POST https://{region}.tts.speech.microsoft.com/cognitiveservices/v1` with an SSML body and
`X-Microsoft-OutputFormat: raw-8khz-8bit-mono-mulaw`: that is Twilio's own format, so chunks go
to the caller untouched (`encoding="ulaw"`), framed as they arrive. Azure has no incremental text
input over REST, so `ivr.providers.http_tts` makes one request per piece, pipelined.

`IVR_AZURE_TTS_URL` replaces the regional URL (sovereign clouds, a proxy, the test fake).
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable
from xml.sax.saxutils import escape, quoteattr

import httpx

from ivr.config import ConfigError, Settings
from ivr.providers import cloud
from ivr.providers.base import TextToSpeech
from ivr.providers.elevenlabs import FallbackTts
from ivr.providers.http_tts import Fatal, HttpTts, Retryable

log = logging.getLogger("ivr.tts.azure")

SYNTHESIS_PATH = "/cognitiveservices/v1"
VOICES_PATH = "/cognitiveservices/voices/list"

PROVIDER = "azure_tts"
OUTPUT_FORMAT = "raw-8khz-8bit-mono-mulaw"


def ssml(text: str, voice: str) -> str:
    # The voice name starts with its locale (en-US-AvaMultilingualNeural); xml:lang must be set.
    lang = "-".join(voice.split("-")[:2]) or "en-US"
    return (f"<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang={quoteattr(lang)}>"
            f"<voice name={quoteattr(voice)}>{escape(text.strip())}</voice></speak>")


class AzureTts(HttpTts):
    provider = PROVIDER
    name = "Azure"
    sample_rate = 8000
    encoding = "ulaw"

    def __init__(self, key: str, url: str, voice: str = "en-US-AvaMultilingualNeural", max_requests: int = 100) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"IVR_AZURE_TTS_URL: {url!r} must start with https:// (or http:// for a local server)")
        if not voice.strip():
            raise ConfigError("AZURE_SPEECH_VOICE: a voice is required (e.g. en-US-AvaMultilingualNeural)")
        self.url, self.voice = url, voice.strip()
        self.headers = {
            "Ocp-Apim-Subscription-Key": key,
            "Content-Type": "application/ssml+xml",
            "X-Microsoft-OutputFormat": OUTPUT_FORMAT,
            "User-Agent": "ivr",
        }
        # One pool per process; a call's pieces reuse its connections (no TLS handshake per piece).
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=100,
                                                            keepalive_expiry=cloud.HTTP_KEEPALIVE_S))
        self.limit = cloud.Limit(PROVIDER, max_requests, "requests", "IVR_AZURE_MAX_REQUESTS")

    async def load(self) -> None:
        """Ask the region for its voices once: a bad key, or a voice the region does not have,
        fails at start-up naming the variable. Skipped for endpoints other than the regional
        `/cognitiveservices/v1` (custom voice deployments list no voices there)."""
        if not self.url.endswith(SYNTHESIS_PATH):
            return
        voices_url = self.url[: -len(SYNTHESIS_PATH)] + VOICES_PATH
        try:
            async with asyncio.timeout(10):
                response = await self.client.get(voices_url, headers={"Ocp-Apim-Subscription-Key": self.headers["Ocp-Apim-Subscription-Key"]})
            if response.status_code in (401, 403):
                raise ConfigError(str(cloud.KeyRejected("Azure", "AZURE_SPEECH_KEY", f"HTTP {response.status_code}; the key must be for this region")))
            response.raise_for_status()
            names = {name for v in response.json() for name in (v.get("ShortName"), v.get("Name"))}
        except ConfigError:
            raise
        except Exception as exc:
            log.warning("could not list Azure voices at %s at start-up (%s); turns will try anyway", voices_url, exc)
            return
        if self.voice not in names:
            raise ConfigError(f"AZURE_SPEECH_VOICE: {self.voice!r} is not a voice of this region "
                              f"(its voices: GET {voices_url})")

    async def synthesize(self, text: str) -> AsyncIterator[tuple[bytes, int, str]]:
        body = ssml(text, self.voice).encode()
        try:
            async with self.client.stream("POST", self.url, headers=self.headers, content=body) as response:
                if response.status_code != 200:
                    await _raise_for(response, self.voice)
                # No chunk size: bytes go on as they arrive, not once a buffer fills.
                async for data in response.aiter_bytes():
                    yield data, 8000, "ulaw"
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout) as exc:
            raise Retryable(f"cannot reach {self.url} ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        await self.client.aclose()


async def _raise_for(response: httpx.Response, voice: str) -> None:
    status = response.status_code
    detail = (await response.aread())[:200].decode("utf-8", "replace").strip()
    if status in (401, 403):
        raise cloud.KeyRejected("Azure", "AZURE_SPEECH_KEY", f"HTTP {status}; the key must be for this region")
    if status == 429:
        raise Retryable("rate limited (HTTP 429): the resource's quota is exhausted, or lower IVR_AZURE_MAX_REQUESTS")
    if status >= 500:
        raise Retryable(f"server error (HTTP {status})")
    raise Fatal(f"HTTP {status} {detail!r} (check AZURE_SPEECH_VOICE={voice})")


def from_settings(settings: Settings, backup: Callable[[], TextToSpeech] | None) -> FallbackTts:
    key = cloud.require_key(settings.azure_speech_key, "Azure", "AZURE_SPEECH_KEY", "IVR_TTS=azure")
    url = settings.azure_tts_url.strip()
    region = settings.azure_speech_region.strip().lower()
    if not url:
        if not region:
            raise ConfigError("IVR_TTS=azure needs AZURE_SPEECH_REGION (e.g. eastus) or IVR_AZURE_TTS_URL")
        if not region.replace("-", "").isalnum():
            raise ConfigError(f"AZURE_SPEECH_REGION: {region!r} is not a region name like eastus")
        url = f"https://{region}.tts.speech.microsoft.com{SYNTHESIS_PATH}"
    if settings.tts_cooloff_s < 0:
        raise ConfigError("IVR_TTS_COOLOFF_S: cannot be negative")
    primary = AzureTts(key, url, settings.azure_speech_voice, settings.azure_max_requests)
    return FallbackTts(primary, backup, settings.tts_cooloff_s, provider=PROVIDER, name="Azure TTS",
                       preload=settings.stand_ins == "preload")
