"""The end-of-turn model (Smart Turn v3 on phone-band audio), the transcript rule, and the gate
that holds a turn while the caller is mid-sentence."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from ivr.bench.engines import load_samples
from ivr.bench.turns import load_paused, speech_spans
from ivr.providers.base import EndOfTurn, Final, SpeechStarted
from ivr.providers.scripted import ScriptedStt
from ivr.turn.gate import TurnGatedStt, TurnOptions, TurnVerdict
from ivr.turn.model import SmartTurn, bundled_model_path
from ivr.turn.words import sounds_like_a_question, sounds_unfinished

SAMPLES = Path(__file__).parent / "samples"
PAUSED = SAMPLES / "paused"

needs_model = pytest.mark.skipif(bundled_model_path() is None, reason="pipecat-ai (the turn extra) is not installed")


# --- the transcript rule -----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "The number I have is", "My name is John and", "I'd like to speak to the", "The card ends in",
    "The number is 555", "It's five five five, five five five", "I was wondering if", "Well, um",
    "I need the-", "So...", "The person at extension,", "4, 2,", "My address is:",
])
def test_text_that_stops_mid_sentence(text):
    assert sounds_unfinished(text)


@pytest.mark.parametrize("text", [
    "", "What time do you open?", "Thank you.", "Yes I do.", "I think so.", "My order number is 4572.",
    "The number is 555-0123.", "Extension four two.", "Can I speak to a real person?", "No.",
])
def test_text_that_can_end_a_turn(text):
    assert not sounds_unfinished(text)


@pytest.mark.parametrize("text, question", [
    ("Hi. What time are you open?", True), ("Hi what time are you open?", True),
    ("I was wondering what time you open?", True), ("Where are you located?", True), ("Can I speak to a real person?", True),
    ("Can you tell me?", False), ("Could you put me through to the?", False), ("Open today?", False),
    ("What time do you open.", False), ("Is it?", False),
])
def test_a_whole_question(text, question):
    assert sounds_like_a_question(text) is question


# --- the model on phone-band clips with known answers --------------------------------------------


def _first_part(ulaw: bytes, tail_ms: int = 200) -> bytes:
    """A paused sentence cut where the caller paused: what the model hears at that moment."""
    end = speech_spans(ulaw)[0][1]
    return ulaw[: (end + tail_ms) * 8]


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    return SmartTurn()


@needs_model
def test_features_match_the_extractor_the_model_was_trained_with(model):
    # pipecat's numpy copy of transformers' WhisperFeatureExtractor, loaded by path (importing
    # pipecat itself needs its full dependency set).
    path = os.path.join(os.path.dirname(os.path.dirname(bundled_model_path())), "_whisper_features.py")
    spec = importlib.util.spec_from_file_location("smart_turn_features", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    rng = np.random.default_rng(7)
    audio = np.zeros(128000, dtype=np.float32)
    audio[40000:] = rng.normal(0, 0.1, 88000).astype(np.float32)
    normalised = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    ours = model._features.get()(normalised, padding=0)
    np.testing.assert_allclose(ours, reference.compute_whisper_log_mel_features(audio), atol=1e-4)


@needs_model
@pytest.mark.parametrize("name", ["arctic_a0009.wav", "piper_saturday.ulaw", "piper_person.ulaw", "piper_order_number.ulaw"])
def test_the_model_hears_a_finished_sentence_on_a_phone_line(model, name):
    (sample,) = [s for s in load_samples(SAMPLES) if s.name == name]
    verdict = model.judge_ulaw(sample.ulaw)
    assert verdict.probability >= 0.9, verdict


@needs_model
@pytest.mark.parametrize("name", ["piper_02.ulaw", "piper_05.ulaw", "piper_07.ulaw", "piper_10.ulaw"])
def test_the_model_hears_a_sentence_broken_off_on_a_phone_line(model, name):
    # "I'd like to order ...", "I was wondering if ...", "My name is John and ...", "I want to cancel ..."
    (call,) = [c for c in load_paused(PAUSED) if c.name == name]
    verdict = model.judge_ulaw(_first_part(call.ulaw))
    assert verdict.probability < 0.5, verdict


# --- the gate ----------------------------------------------------------------------------------


class _Verdicts:
    """Stands in for the model: answers from a list, records what audio it was given."""

    def __init__(self, *probabilities: float | Exception, delay_s: float = 0.0) -> None:
        self.answers = list(probabilities)
        self.heard: list[int] = []
        self.delay_s = delay_s

    async def load(self) -> None:
        pass

    async def judge(self, ulaw: bytes) -> TurnVerdict:
        self.heard.append(len(ulaw))
        await asyncio.sleep(self.delay_s)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return TurnVerdict(answer, 1.0)


async def _gate(verdicts: _Verdicts, **options):
    inner = ScriptedStt()
    stt = TurnGatedStt(inner, verdicts, TurnOptions(**options))
    gate = await stt.open()
    scripted = inner.sessions[-1]
    scripted.speaking = False
    return gate, scripted


async def _next(gate, timeout: float = 5.0):
    return await asyncio.wait_for(gate.__anext__(), timeout)


async def _audio(gate, ms: int) -> None:
    for _ in range(ms // 20):
        await gate.send(b"\xff" * 160)


async def _settle(gate) -> None:
    """Until the gate has taken in everything the wrapped session queued."""
    await asyncio.sleep(0)
    await asyncio.wait_for(gate._idle.wait(), 5)


async def test_a_finished_statement_ends_after_the_timers_silence():
    verdicts = _Verdicts(0.97)
    gate, inner = await _gate(verdicts, fallback_ms=600)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(Final("I'd like a dozen croissants.", 100, 900))
    inner.push(EndOfTurn("I'd like a dozen croissants.", 900))
    assert isinstance(await _next(gate), SpeechStarted)
    assert isinstance(await _next(gate), Final)
    await _settle(gate)
    assert gate.decisions[-1].complete
    await _audio(gate, 400)  # 900 + 600 ms of silence not reached: a short pause stays in the turn
    assert gate._events.empty()
    await _audio(gate, 200)
    assert await _next(gate) == EndOfTurn("I'd like a dozen croissants.", 900)
    # The model heard the turn from 500 ms before its first speech (here: all of it).
    assert verdicts.heard == [1000 * 8]
    await gate.aclose()


async def test_a_whole_question_ends_at_once_whatever_the_model_says():
    verdicts = _Verdicts(0.1)
    gate, inner = await _gate(verdicts)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("Hi. What time are you open?", 900))
    await _next(gate)
    assert await _next(gate) == EndOfTurn("Hi. What time are you open?", 900)
    assert gate.decisions[-1].question and verdicts.heard == []
    await gate.aclose()


async def test_a_paused_caller_is_held_and_the_turn_is_one_sentence():
    gate, inner = await _gate(_Verdicts(0.2, 0.95))
    await _audio(gate, 1200)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("I want to cancel", 1100))
    assert isinstance(await _next(gate), SpeechStarted)
    await _settle(gate)
    await _audio(gate, 900)  # a pause: no end of turn is let through
    assert gate._events.empty() and gate._held is not None
    inner.push(SpeechStarted(2000))
    inner.push(EndOfTurn("the order I placed yesterday.", 3500))
    assert isinstance(await _next(gate), SpeechStarted)
    await _settle(gate)
    await _audio(gate, 2000)  # the finished statement's silence
    assert await _next(gate) == EndOfTurn("I want to cancel the order I placed yesterday.", 3500)
    await gate.aclose()


@pytest.mark.parametrize("text, goodbye", [
    ("No thanks, that's all.", True), ("Thank you.", True), ("Okay, bye.", True), ("That is all", True),
    ("Thank you for", False), ("That's all I", False), ("I'd like a cake.", False), ("Thanks,", False),
])
def test_a_closing(text, goodbye):
    from ivr.turn.words import sounds_like_a_goodbye

    assert sounds_like_a_goodbye(text) is goodbye


async def test_a_closing_ends_after_the_timer_whatever_the_model_says():
    verdicts = _Verdicts(0.01)
    gate, inner = await _gate(verdicts, fallback_ms=600, max_silence_ms=1500)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("No thanks, that's all.", 900))
    await _next(gate)
    await _settle(gate)
    assert gate.decisions[-1].complete and verdicts.heard == []  # the model was not asked
    await _audio(gate, 400)
    assert gate._events.empty()  # a closing waits the plain timer, not a question's zero
    await _audio(gate, 200)
    assert await _next(gate) == EndOfTurn("No thanks, that's all.", 900)
    await gate.aclose()


async def test_the_last_words_hold_a_turn_the_model_calls_finished():
    gate, inner = await _gate(_Verdicts(0.99), max_silence_ms=1500)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("The number I have is", 900))
    await _next(gate)  # SpeechStarted
    await _settle(gate)
    assert gate.decisions[-1].unfinished_text and not gate.decisions[-1].complete
    # Nobody goes on: the turn ends after the longest wait, counted from the end of speech.
    await _audio(gate, 1300)
    assert gate._events.empty()
    await _audio(gate, 200)
    assert await _next(gate) == EndOfTurn("The number I have is", 900)
    await gate.aclose()


async def test_a_failed_model_leaves_the_plain_timer():
    gate, inner = await _gate(_Verdicts(RuntimeError("broken model")), fallback_ms=600, max_silence_ms=2000)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("Hello?", 900))
    await _next(gate)
    await _settle(gate)
    await _audio(gate, 400)  # 900 + 600 ms is not reached yet
    assert gate._events.empty()
    await _audio(gate, 200)
    assert await _next(gate) == EndOfTurn("Hello?", 900)
    await gate.aclose()


async def test_a_verdict_later_than_the_ceiling_is_not_waited_for():
    """A starved machine must not hold turns past the ceiling: the gate waits for the model only
    until the longest wait would have ended the turn, then the plain timer decides."""
    gate, inner = await _gate(_Verdicts(0.01, delay_s=30), fallback_ms=600, max_silence_ms=700)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("I'd like a dozen croissants.", 900))
    await _next(gate)
    started = asyncio.get_running_loop().time()
    await _settle(gate)
    # 100 ms of silence fed: the model was waited for the remaining 600 ms, not its 30 s.
    assert asyncio.get_running_loop().time() - started < 5
    decision = gate.decisions[-1]
    assert decision.probability is None and not decision.complete
    await _audio(gate, 400)  # 900 + 600 ms not reached yet
    assert gate._events.empty()
    await _audio(gate, 200)
    assert await _next(gate) == EndOfTurn("I'd like a dozen croissants.", 900)
    await gate.aclose()


@needs_model
async def test_the_model_refuses_work_it_could_only_queue(model):
    """A decision behind a full pool is refused at once (TurnModelBusy), not queued."""
    import threading

    from ivr.turn.model import TurnModelBusy

    release = threading.Event()
    held = [asyncio.ensure_future(model.pool.run(release.wait, 10))
            for _ in range(model.pool.workers + model.max_waiting)]
    await asyncio.sleep(0.05)
    try:
        with pytest.raises(TurnModelBusy):
            await model.judge(b"\xff" * 8000)
    finally:
        release.set()
        await asyncio.gather(*held)
    verdict = await model.judge(b"\xff" * 8000)  # free again: judged
    assert 0.0 <= verdict.probability <= 1.0


async def test_words_from_no_speech_pass_straight_through():
    verdicts = _Verdicts()
    gate, inner = await _gate(verdicts)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("", 400))
    await _next(gate)
    assert await _next(gate) == EndOfTurn("", 400)
    assert verdicts.heard == []  # nothing to judge
    await gate.aclose()


async def test_finalize_lets_a_held_turn_go():
    gate, inner = await _gate(_Verdicts(0.1))
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("I'd like to order", 900))
    await _next(gate)
    await _settle(gate)
    await gate.finalize()
    assert await _next(gate) == EndOfTurn("I'd like to order", 900)
    await gate.aclose()


async def test_a_held_turn_ends_even_if_the_caller_audio_stops_coming():
    gate, inner = await _gate(_Verdicts(0.1), fallback_ms=100, max_silence_ms=200)
    await _audio(gate, 1000)
    inner.push(SpeechStarted(100))
    inner.push(EndOfTurn("I'd like to order", 900))
    await _next(gate)
    # No more audio at all (a stalled stream): the wall clock ends the wait.
    assert await _next(gate, timeout=5.0) == EndOfTurn("I'd like to order", 900)
    await gate.aclose()


async def test_a_turn_whose_caller_already_went_on_waits_for_the_rest():
    gate, inner = await _gate(_Verdicts(), fallback_ms=400, max_silence_ms=500)
    await _audio(gate, 600)
    inner.speaking = True
    await _audio(gate, 20)
    inner.speaking = False  # a VAD that says when the caller speaks
    await _audio(gate, 20)
    inner.push(SpeechStarted(100))
    inner.push(SpeechStarted(700))  # "Hi ... what time are you open?": the next words began
    inner.push(EndOfTurn("Hi", 400))  # before the end of the first reached the gate
    await _next(gate)
    await _next(gate)
    await _settle(gate)
    assert gate._held is not None and gate.decisions[-1].probability is None
    await _audio(gate, 2000)  # however long the rest takes, the first words are not let go alone
    assert gate._events.empty()
    inner.push(EndOfTurn("what time are you open?", 2000))
    assert await _next(gate) == EndOfTurn("Hi what time are you open?", 2000)
    await gate.aclose()
