"""Replayed sample calls through the real server with the request-per-piece voices: OpenAI speech
(raw pcm and SSE) and Azure, each with its real client against its fake on 127.0.0.1.

Deepgram (fake) hears the caller and OpenAI chat (fake) answers, as in test_cloud_e2e; the voice
under test speaks at twice real time (as fast as the harness plays at SPEED 2), so a barge-in
finds a request still streaming. The embedded fallback voice is the scripted `InstantTts` (Piper
would only slow the suite down; which voice takes over is not what is tested here). The prompt
cache is emptied before each call so every piece, the greeting too, goes to the voice under test.
Assertions are on behaviour and order, never on wall-clock speed.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest

from fakes.azure_tts import FakeAzureTts
from fakes.deepgram import FakeDeepgram
from fakes.openai_api import FakeOpenAI
from fakes.openai_tts import FakeOpenAITts
from fakes.twilio_api import FakeTwilioApi
from ivr.call import CallFactory
from ivr.call.engine import PromptCache
from ivr.telephony.twilio_control import TwilioControl
from ivr.telephony.twilio_rest import TwilioRest
from ivr.config import Settings
from ivr.harness.emulator import ReplayOptions
from ivr.harness.run import replay_file
from ivr.providers.elevenlabs import FallbackTts
from ivr.providers.registry import build
from ivr.providers.scripted import InstantTts
from ivr.server import create_app
from live_server import serve

SAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "harness" / "samples"
ACCOUNT, TOKEN = "AC" + "1" * 32, "2" * 32
SPEED = 2.0
FLOW = """
name: Sunrise Bakery (LLM)
greeting: "Thanks for calling Sunrise Bakery. How can I help?"
system_prompt: You answer the phone for Sunrise Bakery.
llm: {first_token_timeout: 2}
transfers: {staff: "+15550100123"}
nodes: {main: {say: unused with the LLM}}
"""
HOURS = """
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
    """

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class RecordingFactory(CallFactory):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def __call__(self, line):
        call = super().__call__(line)
        self.calls.append(call)
        return call


def voice_env(variant: str, url: str) -> dict[str, str]:
    if variant == "azure":
        return {"IVR_TTS": "azure", "AZURE_SPEECH_KEY": "az-test-key", "IVR_AZURE_TTS_URL": url + "/cognitiveservices/v1"}
    return {"IVR_TTS": "openai", "OPENAI_TTS_BASE_URL": url + "/v1", "OPENAI_TTS_VOICE": "coral",
            "OPENAI_TTS_STREAM_FORMAT": "sse" if variant == "openai-sse" else "audio"}


@pytest.fixture(scope="module", params=["openai", "openai-sse", "azure"])
def stack(request, tmp_path_factory):
    variant = request.param
    flow = tmp_path_factory.mktemp("flow") / "flow.yaml"
    flow.write_text(FLOW)
    brain = FakeOpenAI("sk-test")
    voice = FakeAzureTts(pace=SPEED) if variant == "azure" else FakeOpenAITts("sk-test", pace=SPEED)
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    with FakeDeepgram("dg-test-key") as dg, serve(brain.app) as brain_url, serve(voice.app) as voice_url, \
            serve(api.app) as api_url:
        settings = Settings.from_env({
            "DEEPGRAM_API_KEY": "dg-test-key", "IVR_DEEPGRAM_URL": dg.url, "IVR_DEEPGRAM_ENDPOINTING_MS": "700",
            "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": brain_url + "/v1", "IVR_FLOW": str(flow),
            "IVR_TTS_COOLOFF_S": "0",  # each turn tries the cloud voice again: faults are per test
            **voice_env(variant, voice_url),
        })
        providers = build(settings)
        assert isinstance(providers.tts, FallbackTts)
        backup = InstantTts()
        providers.tts = FallbackTts(providers.tts.primary, lambda: backup, 0, providers.tts.provider, providers.tts.name)
        factory = RecordingFactory(providers, controls={"twilio": TwilioControl(TwilioRest(ACCOUNT, TOKEN, base_url=api_url))})
        app = create_app(settings, handler_factory=factory)
        with serve(app) as base:
            yield variant, base.replace("http", "ws") + "/media", factory, dg, voice, backup


def run(stack, tmp_path, body: str):
    variant, url, factory, dg, voice, backup = stack
    factory.cache = PromptCache()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "call.yaml"
    path.write_text(textwrap.dedent(body).replace("SAMPLES", str(SAMPLES)))
    out = asyncio.run(replay_file(path, ReplayOptions(url=url, speed=SPEED, max_call_s=60), tmp_path / "out"))
    return out.report, factory.calls[-1]


def test_hours_call_end_to_end(stack, tmp_path):
    variant, url, factory, dg, voice, backup = stack
    dg.say("Hi. What time are you open?", "No thanks, that's all.")
    voice.requests.clear()
    fallbacks = len(backup.streams)
    report, call = run(stack, tmp_path, HOURS)
    turns = call._history()
    assert [t.role for t in turns] == ["bot", "caller", "bot", "caller", "bot"], turns
    assert turns[1].text == "Hi. What time are you open?" and turns[3].text == "No thanks, that's all."
    assert "tuesday to sunday" in turns[2].text.lower() and "goodbye" in turns[4].text.lower()
    assert report["call"]["ended_by"] == "bot"
    assert all(m["outcome"] == "played" for m in report["marks"]), (report["marks"], report["clears"], report["turns"])
    # Every piece the caller heard was one request to the voice under test (a repeated piece came
    # from the prompt cache), none to the fallback.
    pieces = {p.text.strip() for role, item in call.history if role == "bot" for p in item.ledger.pieces}
    spoken = [t.strip() for t in voice.texts()]
    assert sorted(spoken) == sorted(pieces)
    assert len(backup.streams) == fallbacks
    assert all(r.completed for r in voice.requests)
    assert call.stats.answers and call.stats.answers[0].first_audio_at is not None


def test_barge_in_hangs_up_on_the_voice_and_sends_nothing_after_clear(stack, tmp_path):
    variant, url, factory, dg, voice, backup = stack
    dg.say("Where are you located?", "No thank you.")
    voice.requests.clear()
    report, call = run(stack, tmp_path, """
        name: barge-in
        steps:
          - audio: SAMPLES/where-are-you.wav
            text: "Where are you located?"
            after: bot_silent 0.8
          - audio: SAMPLES/no-thank-you.wav
            text: "No thank you."
            after: bot_speaking 1.5
          - hangup:
            after: bot_silent 5.0
        """)
    assert len(report["barge_ins"]) >= 1
    assert all(b["frames_after_clear"] == 0 for b in report["barge_ins"])
    cut_requests = voice.disconnected()
    assert cut_requests, "the barge-in did not close a request to the voice"
    bot_turns = [item for role, item in call.history if role == "bot"]
    cut = next(b for b in bot_turns if "market street" in " ".join(p.text for p in b.ledger.pieces).lower())
    # Every request the barge-in closed was for a piece of the answer it cut.
    pieces = {p.text.strip() for p in cut.ledger.pieces}
    assert all(r.body.get("input", r.body.get("text", "")).strip() in pieces for r in cut_requests), cut_requests
    answer = cut.heard()
    assert answer.interrupted and len(answer.text) < len(" ".join(p.text for p in cut.ledger.pieces))
    assert any(t.role == "caller" and t.text == "No thank you." for t in call._history())


FAULTS = {
    "openai": [("401", "rejected the key in OPENAI_API_KEY"), ("429", "rate limited (HTTP 429)"),
               ("cut", "RemoteProtocolError")],
    "openai-sse": [("malformed", "malformed SSE event")],
    "azure": [("401", "rejected the key in AZURE_SPEECH_KEY"), ("429", "rate limited (HTTP 429)"),
              ("cut", "RemoteProtocolError")],
}


def test_faults_leave_a_clear_log_line_and_the_call_goes_on(stack, tmp_path, caplog):
    variant, url, factory, dg, voice, backup = stack
    for fault, line in FAULTS[variant]:
        caplog.clear()
        dg.say("Hi. What time are you open?", "No thanks, that's all.")
        voice.requests.clear()
        fallbacks = len(backup.streams)
        if fault in ("401", "429"):
            voice.statuses = [int(fault)]  # the first request of the call: the greeting's first piece
        elif fault == "cut":
            voice.cut_after_audio = 1
        else:
            voice.malformed_sse = 1
        with caplog.at_level(logging.WARNING):
            report, call = run(stack, tmp_path / fault, HOURS)
        turns = call._history()
        # Nothing the caller said is lost, and the conversation reached its end.
        assert [t.text for t in turns if t.role == "caller"] == ["Hi. What time are you open?", "No thanks, that's all."], fault
        assert [t.role for t in turns] == ["bot", "caller", "bot", "caller", "bot"], (fault, turns)
        assert report["call"]["ended_by"] == "bot", fault
        assert line in caplog.text, (fault, caplog.text[-2000:])
        if fault == "429":
            assert len(backup.streams) == fallbacks  # retried before the first byte: no fallback needed
        else:
            assert len(backup.streams) > fallbacks, fault  # the embedded voice finished the turn
        # The next turns went back to the cloud voice (cool-off 0 here).
        assert any(r.completed for r in voice.requests), fault
