"""`GET /metrics` during a replayed call shows the latency histograms and counters moving.

The real server (uvicorn on loopback) with the embedded engines; the harness plays Twilio with
the barge-in sample (a greeting, a barge-in, an answer). The scrape happens while the call is
still connected, as soon as the engine has sent its first answer frame.
"""

import asyncio
import threading
from pathlib import Path

import httpx
import pytest

from ivr.call import CallFactory
from ivr.config import Settings
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.sources import load_call
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve
from ops_server import scrape, value

SAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "harness" / "samples"
LOCAL = {"IVR_STT": "local", "IVR_TTS": "local", "IVR_BRAIN": "flow"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def providers():
    p = build(Settings.from_env(LOCAL))
    asyncio.run(p.load())
    return p


async def test_metrics_move_during_a_replayed_call(providers):
    factory = CallFactory(providers)
    answered = threading.Event()  # set on the server's loop thread, awaited here

    def listen(line):
        def on_event(event: dict) -> None:
            if event.get("type") == "latency" and not event.get("greeting"):
                answered.set()
        return on_event

    app = create_app(Settings.from_env(LOCAL), handler_factory=factory)
    factory.listen = listen
    with serve(app) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            before = scrape((await http.get("/metrics")).text)
            plan = await load_call(SAMPLES / "barge_in.yaml")
            call = asyncio.create_task(TwilioEmulator(plan, ReplayOptions(url=base.replace("http", "ws") + "/media", speed=2.0, max_call_s=120)).run())
            assert await asyncio.to_thread(answered.wait, 120), "the bot never answered"
            during = scrape((await http.get("/metrics")).text)
            record = await call
            # The harness returns once the socket closes; the server finishes the call just after.
            # The gauge is process-wide: an earlier test's call may still be on it, or end meanwhile.
            async with asyncio.timeout(10):
                while value(after := scrape((await http.get("/metrics")).text), "ivr_active_calls") > value(before, "ivr_active_calls"):
                    await asyncio.sleep(0.02)

    assert record.ended_by in ("caller", "bot") and not record.errors, record.errors
    # The gauge is process-wide: compared with its value before the call, not with zero.
    assert value(during, "ivr_active_calls") == value(before, "ivr_active_calls") + 1  # scraped while the call was on
    moved = {
        name: value(during, name) - value(before, name)
        for name in (
            "ivr_greeting_latency_seconds_count",
            "ivr_barge_in_latency_seconds_count",
            "ivr_response_latency_seconds_count",
            "ivr_barge_ins_total",
            "ivr_frames_in_total",
            "ivr_frames_out_total",
        )
    }
    assert all(delta >= 1 for delta in moved.values()), moved
    for stage in ("stt", "brain", "tts"):
        assert value(during, "ivr_turn_stage_seconds_count", stage=stage) > value(before, "ivr_turn_stage_seconds_count", stage=stage)
    # The observations are latencies, not zeros: their sums grew too.
    assert value(during, "ivr_response_latency_seconds_sum") > value(before, "ivr_response_latency_seconds_sum")
    assert value(during, "ivr_barge_in_latency_seconds_sum") > value(before, "ivr_barge_in_latency_seconds_sum")
    assert value(after, "ivr_active_calls") <= value(before, "ivr_active_calls")  # an earlier test's call may end meanwhile
    endings = sum(value(after, "ivr_call_endings_total", how=h) - value(before, "ivr_call_endings_total", how=h) for h in ("caller", "bot", "disconnect"))
    assert endings == 1
    assert value(after, "ivr_call_duration_seconds_count") == value(before, "ivr_call_duration_seconds_count") + 1
