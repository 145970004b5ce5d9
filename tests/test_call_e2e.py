"""Replayed calls through the real server and the embedded engines: the conversation engine.

The harness plays Twilio (marks echoed on time, late or never); the fake Twilio REST API takes
transfers and hang-ups. Assertions are on behaviour and order of events on the call clock, never
on wall-clock speed.
"""

import asyncio
from pathlib import Path

import pytest

from fakes.twilio_api import FakeTwilioApi
from ivr.call import CallFactory, CallOptions
from ivr.telephony.twilio_control import TwilioControl
from ivr.telephony.twilio_rest import TwilioRest
from ivr.config import Settings
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve
from replay_helpers import run, script

ACCOUNT, TOKEN = "AC" + "1" * 32, "2" * 32

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def providers():
    p = build(Settings.from_env({}))
    asyncio.run(p.load())
    return p


@pytest.fixture(scope="module")
def stack(providers):
    """(media URL, call factory, fake Twilio API) with one server for the module."""
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    with serve(api.app) as api_url:
        factory = CallFactory(providers, controls={"twilio": TwilioControl(TwilioRest(ACCOUNT, TOKEN, base_url=api_url))})
        app = create_app(Settings.from_env({}), handler_factory=factory)
        with serve(app) as base:
            yield base.replace("http", "ws") + "/media", factory, api


@pytest.fixture(scope="module")
def markless(providers):
    """The same for a carrier without marks (IVR_MARKS=off), with quick re-prompts."""
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    with serve(api.app) as api_url:
        options = CallOptions(reprompt_after_ms=2500, max_reprompts=1)
        factory = CallFactory(providers, options, controls={"twilio": TwilioControl(TwilioRest(ACCOUNT, TOKEN, base_url=api_url))}, marks=False)
        app = create_app(Settings.from_env({"IVR_MARKS": "off"}), handler_factory=factory)
        with serve(app) as base:
            yield base.replace("http", "ws") + "/media", factory, api


def voiced_end_before(report, t_ms: float) -> float:
    return max(b for a, b in report["bot"]["speech"] if a < t_ms)


def handover_ms(out, call) -> float:
    """When the bot hung up or transferred, on the replay's call clock (same machine, same clock)."""
    return (call.stats.handed_over_at - out.record.monotonic_start) * 1000


def test_turn_order_and_hang_up_after_the_goodbye(stack, tmp_path):
    url, factory, api = stack
    api.updates.clear()
    path = script(tmp_path, """
        name: hours
        steps:
          - audio: SAMPLES/hours-question.wav
            text: "Hi. What time are you open?"
            after: bot_silent 0.8
          - audio: SAMPLES/no-thanks.wav
            text: "No thanks, that's all."
            after: bot_silent 0.8
          - hangup:
            after: bot_silent 5.0
        """)
    out = run(url, path, tmp_path / "out")
    call = factory.recent[-1]
    turns = call._history()
    roles = [t.role for t in turns]
    assert roles == ["bot", "caller", "bot", "caller", "bot"], turns
    assert "open" in turns[1].text.lower()
    assert "tuesday" in turns[2].text.lower()  # the hours, as the flow says them
    assert "thanks for calling" in turns[4].text.lower()
    assert not any(t.interrupted for t in turns)
    # The bot ended the call through the REST API, after its goodbye had played.
    assert api.updates and api.updates[-1]["Status"] == "completed"
    report = out.report
    assert report["call"]["ended_by"] == "bot"
    assert all(m["outcome"] == "played" for m in report["marks"])
    last_mark = max(m["echoed_ms"] for m in report["marks"])
    assert report["call"]["duration_ms"] >= last_mark


def test_barge_in_clears_at_once_and_history_keeps_only_heard_words(stack, tmp_path):
    url, factory, _ = stack
    path = script(tmp_path, """
        name: barge-in
        steps:
          - audio: SAMPLES/where-are-you.wav
            text: "Where are you located?"
            after: bot_speaking 3.0
          - hangup:
            after: bot_silent 1.5
        """)
    out = run(url, path, tmp_path / "out")
    report = out.report
    assert len(report["barge_ins"]) >= 1
    barge = report["barge_ins"][0]
    assert barge["clear_ms"] is not None and barge["clear_ms"] >= barge["caller_speech_start_ms"]
    assert barge["frames_after_clear"] == 0
    # The caller heard the bot stop when the clear arrived, not when its queue ran out.
    assert barge["audible_stop_ms"] <= barge["clear_ms"] + 1
    assert report["bot"]["repeated_ms"] == 0
    call = factory.recent[-1]
    turns = call._history()
    greeting = turns[0]
    assert greeting.role == "bot" and greeting.interrupted
    full_greeting = " ".join(p.text for p in call.history[0][1].ledger.pieces)
    assert greeting.text and full_greeting.startswith(greeting.text) and len(greeting.text) < len(full_greeting)
    assert turns[1].role == "caller" and "located" in turns[1].text.lower()
    assert "market street" in turns[2].text.lower()


@pytest.mark.parametrize("murmur", ["Okay.", "Uh-huh."])
def test_a_backchannel_over_the_bot_neither_takes_the_turn_nor_repeats_a_word(stack, tmp_path, murmur):
    url, factory, _ = stack
    path = script(tmp_path, f"""
        name: backchannel
        steps:
          - say: "{murmur}"
            after: bot_speaking 2.5
          - hangup:
            after: bot_silent 1.5
        """)
    out = run(url, path, tmp_path / "out")
    report = out.report
    call = factory.recent[-1]
    turns = call._history()
    assert [t.role for t in turns] == ["bot"], turns  # the murmur never became a caller turn
    assert not turns[0].interrupted and "press 1 for hours" in turns[0].text.lower()  # said in full
    assert report["bot"]["repeated_ms"] == 0  # not one frame heard twice
    for barge in report["barge_ins"]:  # the VAD heard the murmur: the bot paused, then went on
        assert barge["frames_after_clear"] == 0
        assert barge["quiet_ms"] <= 1200, barge
    assert call.stats.barge_ins == 0 and call.stats.resumes == call.stats.pauses


def test_dtmf_zero_asks_the_twilio_api_for_a_transfer(stack, tmp_path):
    url, factory, api = stack
    api.updates.clear()
    path = script(tmp_path, """
        name: operator
        steps:
          - dtmf: "0"
            after: bot_silent 0.5
          - hangup:
            after: bot_silent 10
        """)
    run(url, path, tmp_path / "out")
    twimls = [u.get("Twiml", "") for u in api.updates]
    assert any("<Dial" in t and "<Number>+15550100123</Number>" in t for t in twimls), api.updates
    call = factory.recent[-1]
    assert call.state.value == "ended"
    assert any("putting you through" in t.text.lower() for t in call._history() if t.role == "bot")


@pytest.mark.parametrize("marks", ["late:2500", "never"])
def test_without_timely_marks_questions_are_not_barge_ins_and_a_transfer_follows_the_announcement(stack, tmp_path, marks):
    url, factory, api = stack
    api.updates.clear()
    path = script(tmp_path, """
        name: lossy-line
        steps:
          - audio: SAMPLES/where-are-you.wav
            text: "Where are you located?"
            after: bot_silent 0.8
          - dtmf: "0"
            after: bot_silent 0.8
          - hangup:
            after: bot_silent 10
        """)
    out = run(url, path, tmp_path / "out", marks=marks)
    report = out.report
    call = factory.recent[-1]
    assert report["clears"] == [] and call.stats.pauses == 0  # no needless clear
    said = [(t.role, t.text.lower()) for t in call._history()]
    asked = next(i for i, (role, text) in enumerate(said) if role == "caller" and "located" in text)
    assert any(role == "bot" and "market street" in text for role, text in said[asked:]), said
    assert any("<Dial" in u.get("Twiml", "") for u in api.updates), api.updates
    # The transfer went to Twilio within 2 s of the announcement's end, as the caller heard it.
    transfer_at = handover_ms(out, call)
    assert 0 <= transfer_at - voiced_end_before(report, transfer_at) <= 2000


def test_a_carrier_without_marks_reprompts_a_silent_caller_and_hangs_up_after_the_goodbye(markless, tmp_path):
    url, factory, api = markless
    api.updates.clear()
    path = script(tmp_path, """
        name: silent
        steps:
          - hangup:
            after: at 60
        """)
    out = run(url, path, tmp_path / "out", marks="never")
    report = out.report
    call = factory.recent[-1]
    assert report["marks"] == []  # nothing asked of a carrier without marks
    bot = [t for t in call._history() if t.role == "bot"]
    assert len(bot) == 3 and "lost each other" in bot[-1].text.lower()  # greeting, re-prompt, goodbye
    assert api.updates and api.updates[-1]["Status"] == "completed"
    end = handover_ms(out, call)
    assert report["call"]["ended_by"] == "bot" and end < 60000
    assert 0 <= end - voiced_end_before(report, end) <= 2000


def test_a_recorded_sentence_over_the_bot_interrupts_it_and_into_silence_is_no_barge_in(stack, tmp_path):
    url, factory, _ = stack
    recorded = Path(__file__).parent / "samples" / "arctic_a0009.wav"  # CMU ARCTIC, a real voice
    path = script(tmp_path, f"""
        name: recorded
        steps:
          - audio: {recorded}
            text: "He turned sharply, and faced Gregson across the table."
            after: bot_speaking 3.0
          - audio: {recorded}
            text: "He turned sharply, and faced Gregson across the table."
            after: bot_silent 1.0
          - hangup:
            after: bot_silent 1.5
        """)
    out = run(url, path, tmp_path / "out")
    report = out.report
    call = factory.recent[-1]
    assert len(report["barge_ins"]) == 1 and len(report["clears"]) == 1  # the second one had the floor
    barge = report["barge_ins"][0]
    assert barge["frames_after_clear"] == 0 and barge["audible_stop_ms"] <= barge["clear_ms"] + 1
    assert call.stats.barge_ins == 1 and report["bot"]["repeated_ms"] == 0
    turns = call._history()
    assert turns[0].role == "bot" and turns[0].interrupted
    callers = [t.text.lower() for t in turns if t.role == "caller"]
    assert len(callers) == 2 and all("table" in c or "gregson" in c for c in callers), callers
