"""OpenAI speech (and compatible servers, raw and SSE) and Azure TTS: the real clients (`openai`
SDK, httpx) against their fakes on 127.0.0.1, stream by stream. Calls end to end are in
test_tts_http_calls.py."""

from __future__ import annotations

import asyncio
import base64
import logging

import numpy as np
import pytest

from cloud_helpers import until
from fakes.azure_tts import FakeAzureTts
from fakes.openai_tts import FakeOpenAITts
from ivr.audio import PhoneEncoder
from ivr.config import ConfigError, Settings
from ivr.providers.azure_tts import AzureTts
from ivr.providers.elevenlabs import FallbackTts, TtsFailed
from ivr.providers.http_tts import PcmDecoder
from ivr.providers.openai_tts import MalformedEvent, OpenAITts, _sse_audio
from ivr.providers.registry import build
from live_server import serve
from test_cloud_elevenlabs import Beeps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def openai_fake():
    fake = FakeOpenAITts()
    with serve(fake.app) as url:
        yield fake, url + "/v1"


@pytest.fixture(scope="module")
def azure_fake():
    fake = FakeAzureTts()
    with serve(fake.app) as url:
        yield fake, url + "/cognitiveservices/v1"


@pytest.fixture
def oa(openai_fake):
    fake, url = openai_fake
    fake.requests.clear()
    fake.statuses, fake.cut_after_audio, fake.malformed_sse, fake.pace, fake.info, fake.wav = [], 0, 0, 0.0, False, False
    return fake, url


@pytest.fixture
def az(azure_fake):
    fake, url = azure_fake
    fake.requests.clear()
    fake.statuses, fake.cut_after_audio, fake.pace = [], 0, 0.0
    return fake, url


async def speak(stream, pieces: list[str]):
    for p in pieces:
        await stream.push(p)
    await stream.end()
    async with asyncio.timeout(20):
        return [c async for c in stream]


def expected_pcm_bytes(text: str) -> int:
    return len(text) * int(24000 / 16) * 2


# --- pure parts ----------------------------------------------------------------------------------


def test_decoder_carries_odd_bytes_and_reads_a_streamed_wav_header():
    pcm = np.arange(-500, 500, dtype="<i2").tobytes()
    d = PcmDecoder(24000)
    out = b"".join(d.push(pcm[i:i + 7]) for i in range(0, len(pcm), 7))
    assert out == pcm  # every chunk even, nothing lost or shifted
    header = b"RIFF\xff\xff\xff\xffWAVEfmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") \
        + (2).to_bytes(2, "little") + (16000).to_bytes(4, "little") + (64000).to_bytes(4, "little") \
        + (4).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"data\xff\xff\xff\xff"
    stereo = np.repeat(np.arange(100, dtype="<i2"), 2).tobytes()
    d = PcmDecoder(24000)
    stream = header + stereo
    out = b"".join(d.push(stream[i:i + 5]) for i in range(0, len(stream), 5))
    assert d.rate == 16000 and out == np.arange(100, dtype="<i2").tobytes()  # header dropped, downmixed


async def test_sse_parser_reads_info_delta_done_and_rejects_a_malformed_event():
    async def lines(items):
        for item in items:
            yield item

    d = PcmDecoder(24000)
    audio = [a async for a in _sse_audio(lines([
        'data: {"type": "speech.audio.info", "sample_rate": 22050, "channels": 1, "bits": 16}', "",
        "event: delta", 'data: {"type": "speech.audio.delta", "audio": "' + base64.b64encode(b"ab").decode() + '"}', "",
        'data: {"type": "speech.audio.done", "usage": {}}']), d)]
    assert audio == [b"ab"] and d.rate == 22050
    with pytest.raises(MalformedEvent, match="malformed SSE event"):
        [a async for a in _sse_audio(lines(['data: {"type": "speech.audio.delta", "audio": "%%"}']), PcmDecoder())]


# --- OpenAI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["audio", "sse", "sse+info", "wav"])
async def test_openai_speech_streams_24k_pcm_one_request_per_piece(oa, variant):
    fake, url = oa
    fake.info, fake.wav = variant == "sse+info", variant == "wav"
    tts = OpenAITts("sk-test", url, instructions="Warm and brief.", stream_format="sse" if "sse" in variant else "audio",
                    streaming_strategy="sentence", streaming_chunk_size=120)
    pieces = ["Thanks for calling. ", "We open at seven."]
    chunks = await speak(tts.stream(), pieces)
    assert [c.piece for c in chunks if c.last] == [0, 1]
    assert {(c.sample_rate, c.encoding) for c in chunks} == {(24000, "pcm16")}
    assert all(len(c.audio) % 2 == 0 for c in chunks)  # the fake's odd chunks were re-cut on samples
    for i, text in enumerate(pieces):
        assert sum(len(c.audio) for c in chunks if c.piece == i) == expected_pcm_bytes(text)
    assert sorted(fake.texts()) == sorted(pieces)  # pipelined: they may arrive in either order
    body = fake.requests[0].body
    assert body["response_format"] == "pcm" and body["model"] == "gpt-4o-mini-tts" and body["voice"] == "alloy"
    assert body["instructions"] == "Warm and brief."
    assert body["streaming_strategy"] == "sentence" and body["streaming_chunk_size"] == 120
    assert body.get("stream_format") == ("sse" if "sse" in variant else None)
    # The engine's encoder turns it into whole 8 kHz mu-law frames.
    enc = PhoneEncoder(24000)
    frames = [f for c in chunks if c.piece == 0 for f in enc.push(c.audio)] + enc.flush()
    assert frames and all(len(f) == 160 for f in frames)


async def test_a_piece_of_punctuation_is_not_requested(oa):
    fake, url = oa
    chunks = await speak(OpenAITts("sk-test", url).stream(), ["Well", "... ", "yes."])
    assert [c.piece for c in chunks if c.last] == [0, 1, 2]
    assert not [c for c in chunks if c.piece == 1 and c.audio]
    assert fake.texts() == ["Well", "yes."]


async def test_piece_two_is_requested_while_piece_one_is_still_streaming(oa):
    fake, url = oa
    fake.pace = 4.0
    tts = OpenAITts("sk-test", url)
    stream = tts.stream()
    await stream.push("A first sentence that takes a while to say. ")
    await stream.push("A second one.")
    await stream.push("A third.")
    await stream.end()
    it = stream.__aiter__()
    first = await it.__anext__()
    assert first.piece == 0
    await until(lambda: len(fake.requests) >= 2)
    assert not fake.requests[0].finished  # piece 0 still streaming when piece 1 was asked for
    assert len(fake.requests) == 2  # ...and no further ahead than that
    rest = [c async for c in it]
    assert [c.piece for c in [first, *rest] if c.last] == [0, 1, 2]


async def test_cancel_closes_the_http_streams_at_once_and_nothing_follows(oa):
    fake, url = oa
    fake.pace = 1.0
    tts = OpenAITts("sk-test", url)
    stream = tts.stream()
    await stream.push("This is a long answer that the caller will not let me finish. ")
    # Long enough (4 s at the fake's real-time pace) to be still streaming on a busy machine.
    await stream.push("And there is more to say after this, and quite a lot more after that.")
    await stream.end()
    it = stream.__aiter__()
    assert (await it.__anext__()).audio
    # Both requests are asked for at once, but on a busy machine the second may not have reached
    # the fake by the first audio: cancelling then would leave it nothing to hang up.
    await until(lambda: len(fake.requests) == 2)
    assert not any(r.finished for r in fake.requests)
    await stream.cancel()
    assert [c async for c in it] == []
    await until(lambda: len(fake.disconnected()) == 2)  # both requests in flight were hung up


@pytest.mark.parametrize("status", [429, 500])
async def test_a_retryable_error_before_audio_is_retried_once(oa, status, caplog):
    fake, url = oa
    fake.statuses = [status]
    chunks = await speak(OpenAITts("sk-test", url).stream(), ["Hello again."])
    assert chunks[-1].last and sum(len(c.audio) for c in chunks) == expected_pcm_bytes("Hello again.")
    assert len(fake.requests) == 2
    assert f"HTTP {status}" in caplog.text and "retrying piece 0" in caplog.text


async def test_a_rejected_key_is_not_retried_and_the_log_names_the_variable(oa, caplog):
    fake, url = oa
    stream = OpenAITts("sk-wrong", url).stream()
    with pytest.raises(TtsFailed) as failed:
        await speak(stream, ["Hello."])
    assert not failed.value.audio_sent and "OPENAI_API_KEY" in caplog.text
    assert "sk-wrong" not in caplog.text  # the key itself is never logged


@pytest.mark.parametrize("fault", ["cut", "malformed"])
async def test_a_stream_broken_after_audio_falls_back_to_the_embedded_voice(oa, fault, caplog):
    fake, url = oa
    fake.cut_after_audio = fault == "cut"
    fake.malformed_sse = fault == "malformed"
    backup = Beeps()
    tts = FallbackTts(OpenAITts("sk-test", url, stream_format="sse"), lambda: backup, 60, "openai_tts", "OpenAI TTS")
    stream = tts.stream()
    with caplog.at_level(logging.WARNING):
        await stream.push("First part of the answer. ")
        await until(lambda: len(fake.requests) == 1)  # the fault goes to piece 0's request, not piece 1's
        chunks = await speak(stream, ["Second part."])
    assert chunks[0].encoding == "pcm16" and chunks[0].sample_rate == 24000  # OpenAI began...
    assert backup.texts == ["First part of the answer. ", "Second part."]  # ...the embedded voice said the rest
    assert [c.piece for c in chunks if c.last] == [0, 1]
    expected = "malformed SSE event" if fault == "malformed" else "RemoteProtocolError"
    assert expected in caplog.text and "after audio had started" in caplog.text
    assert "OpenAI TTS failed" in caplog.text  # the fallback says so, once
    # Cooling off: the next turn goes straight to the embedded voice.
    n = len(fake.requests)
    chunks = await speak(tts.stream(), ["Next turn."])
    assert chunks[0].sample_rate == 16000 and len(fake.requests) == n


# --- Azure -----------------------------------------------------------------------------------------


async def test_azure_streams_ulaw_untouched_from_an_ssml_request(az):
    fake, url = az
    tts = AzureTts("az-test-key", url)
    pieces = ["Thanks for calling & welcome. ", "We <really> open at seven."]
    chunks = await speak(tts.stream(), pieces)
    assert {(c.sample_rate, c.encoding) for c in chunks} == {(8000, "ulaw")}
    assert [c.piece for c in chunks if c.last] == [0, 1]
    assert sorted(fake.texts()) == sorted(p.strip() for p in pieces)  # escaped in SSML, read back intact
    r = next(r for r in fake.requests if r.body["text"] == pieces[0].strip())
    assert r.headers["x-microsoft-outputformat"] == "raw-8khz-8bit-mono-mulaw" and r.body["voice"] == "en-US-AvaMultilingualNeural"
    assert sum(len(c.audio) for c in chunks if c.piece == 0) == len(pieces[0].strip()) * 500  # 16 chars/s at 8000 bytes/s


async def test_azure_cancel_hangs_up(az):
    fake, url = az
    fake.pace = 1.0
    stream = AzureTts("az-test-key", url).stream()
    await stream.push("A long answer the caller cuts short, as callers do. ")
    await stream.end()
    it = stream.__aiter__()
    assert (await it.__anext__()).audio
    await stream.cancel()
    assert [c async for c in it] == []
    await until(lambda: len(fake.disconnected()) == 1)


async def test_azure_faults(az, caplog):
    fake, url = az
    fake.statuses = [429]
    chunks = await speak(AzureTts("az-test-key", url).stream(), ["Retry me."])
    assert chunks[-1].last and len(fake.requests) == 2 and "HTTP 429" in caplog.text
    with pytest.raises(TtsFailed):
        await speak(AzureTts("wrong", url).stream(), ["Hello."])
    assert "AZURE_SPEECH_KEY" in caplog.text
    fake.cut_after_audio = 1
    with pytest.raises(TtsFailed) as failed:
        await speak(AzureTts("az-test-key", url).stream(), ["Cut me off please."])
    assert failed.value.audio_sent


def test_settings_choose_and_check_the_adapters():
    p = build(Settings.from_env({"IVR_TTS": "azure", "AZURE_SPEECH_KEY": "k", "AZURE_SPEECH_REGION": "westeurope"}))
    assert p.tts.primary.url == "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1"
    assert p.tts.provider == "azure_tts"
    with pytest.raises(ConfigError, match="AZURE_SPEECH_REGION"):
        build(Settings.from_env({"IVR_TTS": "azure", "AZURE_SPEECH_KEY": "k"}))
    with pytest.raises(ConfigError, match="AZURE_SPEECH_KEY"):
        build(Settings.from_env({"IVR_TTS": "azure", "AZURE_SPEECH_REGION": "eastus"}))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        build(Settings.from_env({"IVR_TTS": "openai"}))
    with pytest.raises(ConfigError, match="OPENAI_TTS_STREAM_FORMAT"):
        build(Settings.from_env({"IVR_TTS": "openai", "OPENAI_API_KEY": "sk", "OPENAI_TTS_STREAM_FORMAT": "mp3"}))
    # A self-hosted compatible server needs no key.
    p = build(Settings.from_env({"IVR_TTS": "openai", "OPENAI_TTS_BASE_URL": "http://127.0.0.1:8880/v1",
                                 "OPENAI_TTS_VOICE": "af_bella", "OPENAI_TTS_STREAM_FORMAT": "sse"}))
    assert p.tts.primary.base_url == "http://127.0.0.1:8880/v1" and p.tts.primary.stream_format == "sse"
    # OPENAI_API_KEY alone still means the OpenAI brain, not the OpenAI voice.
    assert type(build(Settings.from_env({"OPENAI_API_KEY": "sk"})).tts).__name__ == "PiperTts"


# --- keys and voices checked at start-up ------------------------------------------------------


async def test_openai_voice_checks_the_key_at_start_up(oa):
    fake, url = oa
    await OpenAITts("sk-test", url).load()  # the right key: no error
    with pytest.raises(ConfigError, match="OpenAI rejected the key in OPENAI_API_KEY.*HTTP 401"):
        await OpenAITts("sk-wrong", url).load()


async def test_a_compatible_server_without_a_model_list_only_warns(oa, caplog):
    fake, url = oa
    fake.lists_models = False
    try:
        with caplog.at_level(logging.WARNING, logger="ivr.tts.openai"):
            await OpenAITts("sk-wrong", url).load()  # cannot tell the key: the first turn will
    finally:
        fake.lists_models = True
    assert "could not list models" in caplog.text and "sk-wrong" not in caplog.text


async def test_azure_checks_the_key_and_the_voice_at_start_up(az):
    fake, url = az
    await AzureTts("az-test-key", url).load()
    with pytest.raises(ConfigError, match="Azure rejected the key in AZURE_SPEECH_KEY.*HTTP 401"):
        await AzureTts("az-wrong", url).load()
    with pytest.raises(ConfigError, match="AZURE_SPEECH_VOICE: 'en-US-NoSuchNeural' is not a voice of this region"):
        await AzureTts("az-test-key", url, voice="en-US-NoSuchNeural").load()
    assert fake.requests == []  # nothing was synthesised to find out


async def test_azure_custom_endpoints_are_not_checked_against_the_regional_list(az):
    fake, url = az
    # A custom voice deployment's URL: its voice is not in the region's list, and that is fine.
    await AzureTts("az-wrong", url + "?deploymentId=0000", voice="MyCustomNeural").load()
