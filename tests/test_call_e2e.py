"""Replayed calls through the real server and the embedded engines (issue: conversation engine).

The harness plays Twilio; the fake Twilio REST API takes transfers and hang-ups. Assertions are on
behaviour and order of events, never on wall-clock speed.
"""

import asyncio

import pytest

from fakes.twilio_api import FakeTwilioApi
from ivr.call import CallFactory
from ivr.call.twilio_rest import TwilioRest
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
        factory = CallFactory(providers, rest=TwilioRest(ACCOUNT, TOKEN, base_url=api_url))
        app = create_app(Settings.from_env({}), handler_factory=factory)
        with serve(app) as base:
            yield base.replace("http", "ws") + "/media", factory, api


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
    call = factory.recent[-1]
    turns = call._history()
    greeting = turns[0]
    assert greeting.role == "bot" and greeting.interrupted
    full_greeting = " ".join(p.text for p in call.history[0][1].ledger.pieces)
    assert greeting.text and full_greeting.startswith(greeting.text) and len(greeting.text) < len(full_greeting)
    assert turns[1].role == "caller" and "located" in turns[1].text.lower()
    assert "market street" in turns[2].text.lower()


def test_a_backchannel_does_not_take_the_turn(stack, tmp_path):
    url, factory, _ = stack
    path = script(tmp_path, """
        name: backchannel
        steps:
          - say: "Okay."
            after: bot_speaking 2.5
          - hangup:
            after: bot_silent 1.5
        """)
    run(url, path, tmp_path / "out")
    call = factory.recent[-1]
    turns = call._history()
    assert all(t.role == "bot" for t in turns), turns  # "okay" never became a caller turn
    if call.stats.barge_ins:  # the VAD heard it and cut the bot: the bot resumed the cut sentence
        assert turns[0].interrupted and len(turns) >= 2
    bot_texts = " ".join(t.text for t in turns)
    assert "press 1 for hours" in bot_texts.lower()  # the menu was said in full after all


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
