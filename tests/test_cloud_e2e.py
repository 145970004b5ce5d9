"""Replayed sample calls through the real server with all three cloud adapters, each driven by its
real client against its fake on 127.0.0.1 (issue: cloud providers).

Deepgram "recognises" the caller's utterances by their energy and the transcripts the test
scripts; OpenAI answers with the fake's bakery responder; ElevenLabs speaks tone bursts with
alignment, at twice real time (as fast as the harness plays at SPEED 2), so a barge-in finds the
context still speaking. Assertions are on behaviour and order, never on wall-clock speed.
"""

from __future__ import annotations


import pytest

from fakes.deepgram import FakeDeepgram
from fakes.elevenlabs import FakeElevenLabs
from fakes.openai_api import FakeOpenAI
from fakes.twilio_api import FakeTwilioApi
from ivr.call import CallFactory
from ivr.telephony.twilio_control import TwilioControl
from ivr.telephony.twilio_rest import TwilioRest
from ivr.config import Settings
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve
from replay_helpers import run, script

ACCOUNT, TOKEN = "AC" + "1" * 32, "2" * 32
SPEED = 2.0  # the harness's clock (replay_helpers.run), which the fake ElevenLabs paces to
FLOW = """
name: Sunrise Bakery (LLM)
greeting: "Thanks for calling Sunrise Bakery. How can I help?"
system_prompt: You answer the phone for Sunrise Bakery.
llm: {first_token_timeout: 2}
transfers: {staff: "+15550100123"}
nodes: {main: {say: unused with the LLM}}
"""

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    flow = tmp_path_factory.mktemp("flow") / "flow.yaml"
    flow.write_text(FLOW)
    openai = FakeOpenAI("sk-test")
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    with FakeDeepgram("dg-test-key") as dg, FakeElevenLabs("el-test-key", "voice-test", pace=SPEED) as el, \
            serve(openai.app) as openai_url, serve(api.app) as api_url:
        settings = Settings.from_env({
            "DEEPGRAM_API_KEY": "dg-test-key", "IVR_DEEPGRAM_URL": dg.url,
            # The samples' pauses inside a sentence stay inside one utterance.
            "IVR_DEEPGRAM_ENDPOINTING_MS": "700",
            "ELEVENLABS_API_KEY": "el-test-key", "ELEVENLABS_VOICE_ID": "voice-test", "IVR_ELEVENLABS_URL": el.url,
            "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_url + "/v1",
            "IVR_FLOW": str(flow),
        })
        providers = build(settings)
        assert [type(p.primary).__name__ for p in (providers.stt, providers.tts, providers.brain)] == \
            ["DeepgramStt", "ElevenLabsTts", "OpenAIBrain"]  # chosen by their keys alone
        factory = CallFactory(providers, controls={"twilio": TwilioControl(TwilioRest(ACCOUNT, TOKEN, base_url=api_url))})
        app = create_app(settings, handler_factory=factory)
        with serve(app) as base:
            yield base.replace("http", "ws") + "/media", factory, api, dg, el, openai


def test_hours_call_end_to_end_with_the_cloud_adapters(cloud, tmp_path):
    url, factory, api, dg, el, openai = cloud
    api.updates.clear()
    dg.say("Hi. What time are you open?", "No thanks, that's all.")
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
    assert [t.role for t in turns] == ["bot", "caller", "bot", "caller", "bot"], turns
    assert turns[1].text == "Hi. What time are you open?"
    assert "tuesday to sunday" in turns[2].text.lower()  # the fake model's answer, spoken by ElevenLabs
    assert "goodbye" in turns[4].text.lower()
    # The model saw the conversation as heard, and asked to hang up: done through the REST API.
    assert openai.requests[-1]["messages"][-1]["content"] == "No thanks, that's all."
    assert api.updates and api.updates[-1]["Status"] == "completed"
    report = out.report
    assert report["call"]["ended_by"] == "bot"
    assert all(m["outcome"] == "played" for m in report["marks"])
    # The answer's audio came from ElevenLabs with alignment: the ledger holds its word timings.
    answer = call.history[2][1]
    assert any(p.words for p in answer.ledger.pieces)
    assert call.stats.answers and call.stats.answers[0].first_audio_at is not None


def test_barge_in_closes_the_elevenlabs_context_and_keeps_only_heard_words(cloud, tmp_path):
    url, factory, api, dg, el, openai = cloud
    dg.say("Where are you located?", "No thank you.")
    closed_before = len(el.closed_early())
    path = script(tmp_path, """
        name: barge-in
        steps:
          - audio: SAMPLES/where-are-you.wav
            text: "Where are you located?"
            after: bot_silent 0.8
          - audio: SAMPLES/no-thank-you.wav
            text: "No thank you."
            after: bot_speaking 1.0
          - hangup:
            after: bot_silent 5.0
        """)
    out = run(url, path, tmp_path / "out")
    report = out.report
    assert len(report["barge_ins"]) >= 1
    assert all(b["frames_after_clear"] == 0 for b in report["barge_ins"])
    assert len(el.closed_early()) > closed_before  # close_context, on the same socket
    assert el.sockets == 1
    call = factory.recent[-1]
    turns = call._history()
    bot_turns = [item for role, item in call.history if role == "bot"]
    cut = next(b for b in bot_turns if "market street" in " ".join(p.text for p in b.ledger.pieces).lower())
    full = " ".join(p.text for p in cut.ledger.pieces)
    answer = cut.heard()
    assert answer.interrupted and full.startswith(answer.text) and len(answer.text) < len(full)
    assert any(t.role == "caller" and t.text == "No thank you." for t in turns)
    # The model was told what the caller heard, and where they cut in.
    assistant = [m for m in openai.requests[-1]["messages"] if m["role"] == "assistant"]
    assert assistant[-1]["content"].endswith("[the caller interrupted here]")
