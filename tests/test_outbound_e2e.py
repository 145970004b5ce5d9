"""Outbound calls end to end (issue 11): POST /calls -> the fake Twilio REST API places the call,
opens the media stream like Twilio with the harness emulator playing the callee, and posts the
async AMD verdict at the call time the callee sets. The real server and embedded engines answer.

Assertions are on the order of events on the call clock, never on wall-clock speed.
"""

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from fakes.twilio_api import Callee, FakeTwilioApi
from ivr.call import CallFactory
from ivr.telephony.twilio_control import TwilioControl
from ivr.telephony.twilio_rest import TwilioRest
from ivr.config import Settings
from ivr.harness.audiofile import pcm_to_ulaw, read_ulaw
from ivr.harness.plan import After, CallPlan, Hangup, Say
from ivr.harness.tts import default_synthesiser
from ivr.outbound.store import CallStore
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve

SAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "harness" / "samples"
ACCOUNT, TOKEN, API_TOKEN = "AC" + "7" * 32, "8" * 32, "k" * 32
FROM = "+15550001111"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def providers():
    p = build(Settings.from_env({}))
    asyncio.run(p.load())
    return p


@pytest.fixture(scope="module")
def stack(providers, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("outbound")
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    with serve(api.app) as api_url:
        rest = TwilioRest(ACCOUNT, TOKEN, base_url=api_url)
        factory = CallFactory(providers, controls={"twilio": TwilioControl(rest)})
        settings = Settings.from_env({"TWILIO_AUTH_TOKEN": TOKEN, "IVR_API_TOKEN": API_TOKEN,
                                      "IVR_OUTBOUND_DIR": str(store_dir), "IVR_CALLER_ID": FROM})
        app = create_app(settings, handler_factory=factory)
        with serve(app) as base:
            app.state.ivr.outbound.rest = rest
            yield base, api, factory, CallStore(store_dir)


def speech(text: str) -> bytes:
    async def go():
        pcm, rate = await default_synthesiser()(text)
        return pcm_to_ulaw(np.frombuffer(pcm, dtype="<i2"), rate)

    return asyncio.run(go())


def beep(ms: int = 500) -> bytes:
    t = np.arange(8 * ms) / 8000.0
    return pcm_to_ulaw((np.sin(2 * np.pi * 1000 * t) * 12000).astype(np.int16), 8000)


def place(base, to):
    reply = httpx.post(f"{base}/calls", json={"to": to, "params": {"name": "Sam", "order_number": "4572"}},
                       headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)
    assert reply.status_code == 201, reply.text
    return reply.json()["sid"]


def bot_texts(factory, sid):
    call = next(c for c in factory.recent if c.line.start.call_sid == sid)
    return [t.text for t in call._history() if t.role == "bot"], call


def test_machine_gets_the_voicemail_after_the_beep_then_the_bot_hangs_up(stack):
    base, api, factory, store = stack
    greeting = speech("Hi, you've reached Sam. I can't take your call right now. Please leave a message after the tone.")
    tone = beep()
    beep_end_ms = (len(greeting) + len(tone)) / 8
    to = "+15550004444"
    api.callees[to] = Callee(
        plan=CallPlan("machine", "script", "answering machine", [
            Say(greeting, text="voicemail greeting", label="greeting"),
            Say(tone, text=None, label="beep"),
            # A machine records until the line goes quiet (3 s: the bot's pause between two
            # sentences on a busy test machine must not count as the end of its message).
            Hangup(After("bot_silent", 3.0, 60.0)),
        ]),
        answered_by="machine_end_beep",
        amd_at_ms=beep_end_ms + 300,  # DetectMessageEnd: the verdict comes just after the beep
    )
    sid = place(base, to)
    api.wait_done(sid, timeout=120)
    record = api.records[sid]
    stretches = record.playback.voice_since(0, record.end_ms)
    assert stretches, "the bot never spoke"
    # Nothing over the machine's greeting: the bot's first audio plays after the beep.
    assert stretches[0][0] >= beep_end_ms
    texts, call = bot_texts(factory, sid)
    assert len(texts) == 1 and "Hello Sam" in texts[0] and "Call us back" in texts[0], texts
    assert not any(t.role == "caller" for t in call._history())  # the greeting was never a turn
    assert record.ended_by == "bot"
    assert any(u["call_sid"] == sid and u.get("Status") == "completed" for u in api.updates)
    view = next(v for v in store.calls() if v.sid == sid)
    assert view.answered_by == "machine_end_beep" and view.status == "completed" and view.outcome == "voicemail"


def test_person_gets_the_outbound_greeting_and_the_flow_runs(stack):
    base, api, factory, store = stack
    hello = speech("Hello?")
    to = "+15550005555"
    api.callees[to] = Callee(
        plan=CallPlan("person", "script", "a person", [
            Say(hello, text="Hello?", label="hello"),
            Say(read_ulaw(SAMPLES / "no-thanks.wav"), text="No thanks, that's all.", after=After("bot_silent", 0.8, 30.0)),
            Hangup(After("bot_silent", 5.0, 20.0)),
        ]),
        answered_by="human",
        amd_at_ms=len(hello) / 8 + 500,
    )
    sid = place(base, to)
    api.wait_done(sid, timeout=120)
    record = api.records[sid]
    stretches = record.playback.voice_since(0, record.end_ms)
    assert stretches and stretches[0][0] >= len(hello) / 8 + 500  # greeted once the verdict came
    texts, call = bot_texts(factory, sid)
    assert "Hello Sam" in texts[0] and "4 5 7 2" in texts[0] and "Call us back" not in texts[0], texts
    callers = [t.text.lower() for t in call._history() if t.role == "caller"]
    assert callers and "no thanks" in callers[0]  # "Hello?" before the verdict was not a turn
    assert "lovely day" in texts[-1].lower()  # main_quiet's goodbye: the normal flow ran
    assert record.ended_by == "bot"
    view = next(v for v in store.calls() if v.sid == sid)
    assert view.answered_by == "human" and view.outcome == "completed-human"
