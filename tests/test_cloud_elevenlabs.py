"""ElevenLabs multi-context TTS: our websockets client against the fake on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from cloud_helpers import until
from fakes.elevenlabs import FakeElevenLabs
from ivr.config import ConfigError
from ivr.providers.base import AudioChunk
from ivr.providers.elevenlabs import ElevenLabsTts, FallbackTts, PieceAligner

KEY, VOICE = "el-test-key", "voice-test"


@pytest.fixture
def fake():
    with FakeElevenLabs(KEY, VOICE) as f:
        yield f


def engine(fake) -> ElevenLabsTts:
    return ElevenLabsTts(KEY, VOICE, url=fake.url)


async def speak(stream, pieces: list[str]) -> list[AudioChunk]:
    for p in pieces:
        await stream.push(p)
    await stream.end()
    async with asyncio.timeout(10):
        return [c async for c in stream]


class Beeps:
    """A stand-in embedded voice with its own, recognisable audio (pcm16 at 16 kHz)."""

    sample_rate, encoding = 16000, "pcm16"

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def load(self) -> None:
        pass

    def stream(self):
        return _BeepStream(self)


class _BeepStream:
    def __init__(self, owner: Beeps) -> None:
        self.owner, self.pieces, self.ended = owner, [], asyncio.Event()

    async def push(self, text):
        self.pieces.append(text)
        self.owner.texts.append(text)
        return len(self.pieces) - 1

    async def end(self):
        self.ended.set()

    async def cancel(self):
        self.ended.set()

    async def __aiter__(self):
        await self.ended.wait()
        for i, text in enumerate(self.pieces):
            yield AudioChunk(i, b"\x01\x00" * 320 * len(text), 16000, "pcm16", True)


def test_aligner_splits_a_chunk_where_the_next_piece_begins():
    a = PieceAligner()
    a.add_piece("Hi there. ")
    a.add_piece("Bye ")
    chars = list("Hi there. Bye ")
    starts = [i * 10 for i in range(len(chars))]
    audio = bytes(range(256)) * 5  # 1280 bytes = 160 ms
    parts = a.split(audio, {"chars": chars, "charStartTimesMs": starts, "charDurationsMs": [10] * len(chars)})
    assert [(p.piece, p.last) for p in parts] == [(0, True), (1, False)]
    assert parts[0].audio == audio[: 100 * 8] and parts[1].audio == audio[100 * 8:]
    assert [w.word for w in parts[0].words] == ["Hi", "there."] and parts[0].words[1].start_ms == 30
    assert parts[1].words[0].word == "Bye" and parts[1].words[0].start_ms == 0  # relative to its own chunk
    assert a.complete


async def test_a_turn_is_one_context_with_ulaw_audio_per_piece_and_word_timings(fake):
    tts = engine(fake)
    chunks = await speak(tts.stream(), ["Thanks for calling. ", "We open at seven."])
    assert {c.encoding for c in chunks} == {"ulaw"} and {c.sample_rate for c in chunks} == {8000}
    lasts = [c.piece for c in chunks if c.last]
    assert lasts == [0, 1]  # each piece ends once, in order
    words = [w.word for c in chunks for w in c.words]
    assert words == ["Thanks", "for", "calling.", "We", "open", "at", "seven."]
    audio = sum(len(c.audio) for c in chunks)
    assert audio == pytest.approx(len("Thanks for calling. We open at seven. ") * 62 * 8, rel=0.1)
    (ctx,) = fake.contexts.values()
    assert ctx.texts[0] == "Thanks for calling. " and not ctx.closed_early
    assert fake.queries[0]["output_format"] == "ulaw_8000" and fake.queries[0]["model_id"] == "eleven_flash_v2_5"
    # A second turn reuses the socket.
    await speak(tts.stream(), ["Goodbye."])
    assert fake.sockets == 1 and len(fake.contexts) == 2
    await tts.aclose()


async def test_cancel_closes_the_context_and_the_socket_serves_the_next_turn(fake):
    fake.pace = 1.0  # real time: the context is still speaking when the caller cuts in
    tts = engine(fake)
    stream = tts.stream()
    await stream.push("This is a long answer that the caller will not let me finish. ")
    await stream.end()
    it = stream.__aiter__()
    first = await it.__anext__()
    assert first.audio
    await stream.cancel()
    assert [c async for c in it] == []  # nothing after cancel
    await until(lambda: len(fake.closed_early()) == 1)
    fake.pace = 0
    await speak(tts.stream(), ["Sure."])
    assert fake.sockets == 1  # close_context, not a reconnect
    await tts.aclose()


async def test_six_concurrent_turns_use_two_sockets(fake):
    fake.pace = 4.0
    tts = engine(fake)
    results = await asyncio.gather(*(speak(tts.stream(), [f"Turn number {i}."]) for i in range(6)))
    assert all(r and r[-1].last for r in results)
    assert fake.sockets == 2
    await tts.aclose()


async def test_a_turn_right_after_another_reuses_its_slot_without_a_sixth_context(fake):
    """Five callers each taking a turn right after their last one, on one socket: the finished
    context is closed on the wire before its slot goes to the next turn (the service closes the
    socket with 1008 when a sixth context opens)."""
    fake.pace = 0
    tts = engine(fake)

    async def caller(i: int) -> None:
        for turn in range(3):
            chunks = await speak(tts.stream(), [f"Caller {i}, turn {turn}."])
            assert chunks and chunks[-1].last

    retries = REGISTRY.get_sample_value("ivr_provider_errors_total", {"provider": "elevenlabs", "kind": "retry"}) or 0
    await asyncio.gather(*(caller(i) for i in range(5)))
    # One context per turn: none lost to a 1008 close and retried on a new one.
    assert len(fake.contexts) == 15
    assert (REGISTRY.get_sample_value("ivr_provider_errors_total", {"provider": "elevenlabs", "kind": "retry"}) or 0) == retries
    await tts.aclose()


async def test_an_error_before_the_first_audio_is_retried_on_a_new_socket(fake):
    fake.fail_before_audio = 1
    tts = engine(fake)
    chunks = await speak(tts.stream(), ["Hello again."])
    assert chunks and chunks[-1].last and fake.sockets == 2
    await tts.aclose()


async def test_failure_after_audio_finishes_the_turn_with_the_embedded_voice(fake):
    fake.fail_after_audio = 1
    fake.pace = 1.0
    backup = Beeps()
    tts = FallbackTts(engine(fake), lambda: backup, cooloff_s=60)
    chunks = await speak(tts.stream(), ["First part of the answer. ", "Second part."])
    assert chunks[0].encoding == "ulaw"  # ElevenLabs began...
    assert backup.texts == ["First part of the answer. ", "Second part."]  # ...the backup said the rest
    assert [c.piece for c in chunks if c.last] == [0, 1]
    # While ElevenLabs is cooling off, turns go straight to the embedded voice.
    chunks = await speak(tts.stream(), ["Next turn."])
    assert chunks[0].encoding == "pcm16" and backup.texts[-1] == "Next turn."
    await tts.primary.aclose()


async def test_elevenlabs_down_means_the_embedded_voice(fake):
    fake.fail_before_audio = 2  # the first try and its retry
    backup = Beeps()
    tts = FallbackTts(engine(fake), lambda: backup)
    chunks = await speak(tts.stream(), ["Are you there?"])
    assert chunks and all(c.encoding == "pcm16" for c in chunks) and backup.texts == ["Are you there?"]


async def test_a_bad_key_fails_at_start_up_naming_the_variable(fake):
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY"):
        await ElevenLabsTts("nope", VOICE, url=fake.url).load()


async def test_with_no_embedded_voice_a_failed_turn_fails_and_the_server_is_not_ready_for_the_cool_off(fake):
    from ivr.providers.elevenlabs import TtsFailed

    fake.fail_before_audio = 2  # the first try and its retry
    tts = FallbackTts(engine(fake), None, cooloff_s=60)  # the `local` extra not installed
    assert tts.unready() is None
    with pytest.raises(TtsFailed):
        await speak(tts.stream(), ["Are you there?"])
    assert "ElevenLabs" in tts.unready() and "embedded voice" in tts.unready()
    await tts.primary.aclose()
