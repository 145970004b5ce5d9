"""Calls through `ivr serve` over every carrier's protocol, played by the harness as that carrier.

One engine, one harness: the same call script runs against Telnyx, Plivo, Exotel, Vonage,
Asterisk's WebSocket channel and Asterisk's AudioSocket, and each must hear the greeting, get its
question answered and be hung up on after the goodbye. Assertions are on behaviour on the call
clock, never on wall-clock speed.
"""

import asyncio

import pytest

from ivr.call import CallFactory
from ivr.config import Settings
from ivr.harness.carriers import PATHS
from ivr.harness.emulator import ReplayOptions
from ivr.harness.run import replay_file
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import free_port, serve
from replay_helpers import script

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def bot():
    providers = build(Settings.from_env({}))
    asyncio.run(providers.load())
    factory = CallFactory(providers)
    tcp_port = free_port()
    app = create_app(Settings.from_env({"IVR_AUDIOSOCKET_PORT": str(tcp_port)}), handler_factory=factory)
    with serve(app) as base:
        yield base.replace("http", "ws"), f"tcp://127.0.0.1:{tcp_port}", factory


def url_for(bot, carrier: str) -> str:
    ws_base, tcp_url, _ = bot
    return tcp_url if carrier == "audiosocket" else ws_base + PATHS[carrier]


HOURS = """
    name: hours
    params:
      From: "+15550100001"
    steps:
      - audio: SAMPLES/hours-question.wav
        text: "Hi. What time are you open?"
        after: bot_silent 0.8
        timeout: 60
      - audio: SAMPLES/no-thanks.wav
        text: "No thanks, that's all."
        after: bot_silent 0.8
        timeout: 60
      - hangup:
        after: bot_silent 5.0
    """


# Every call is in real time (~30 s), each carrier's own: the shapes repeat (JSON with clear and
# marks, JSON whose clear drops the marks, binary PCM with JSON control, TCP with neither clear
# nor marks) but each carrier's messages and start are its own.
@pytest.mark.parametrize("carrier", ["telnyx", "plivo", "exotel", "vonage", "asterisk-ws", "audiosocket"])
def test_a_call_over_each_carrier(bot, tmp_path, carrier):
    factory = bot[2]
    out = asyncio.run(replay_file(script(tmp_path, HOURS), ReplayOptions(url=url_for(bot, carrier), carrier=carrier, max_call_s=90),
                                  tmp_path / "out"))
    report = out.report
    assert not report["errors"], report["errors"]
    call = factory.recent[-1]
    turns = call._history()
    roles = [t.role for t in turns]
    assert roles == ["bot", "caller", "bot", "caller", "bot"], turns
    assert "open" in turns[1].text.lower()
    assert "tuesday" in turns[2].text.lower()
    assert "thanks for calling" in turns[4].text.lower()
    assert report["call"]["ended_by"] == "bot"
    # What the caller heard is what the bot said: the greeting's audio reached the caller's ear.
    assert report["bot"]["speech"] and report["bot"]["speech"][0][0] < 3000
    # Paced audio keeps the line fed: with AudioSocket's small lead a top-up later than the lead
    # once left it dry for 20 ms in every 80 (hundreds of underruns a call); a late wake-up of a
    # busy machine may still cost one or two.
    assert report["bot"]["underruns"] <= 3, report["bot"]["underruns"]


def test_audiosocket_barge_in_stops_the_bot_by_pacing_alone(bot, tmp_path):
    """AudioSocket has no clear: the bot stops feeding the line, and what it sent ahead is all
    the caller still hears."""
    factory = bot[2]
    path = script(tmp_path, """
        name: barge-in
        steps:
          - audio: SAMPLES/where-are-you.wav
            text: "Where are you located?"
            after: bot_speaking 3.0
          - hangup:
            after: bot_silent 1.5
        """)
    out = asyncio.run(replay_file(path, ReplayOptions(url=url_for(bot, "audiosocket"), carrier="audiosocket", max_call_s=60),
                                  tmp_path / "out"))
    report = out.report
    assert not report["errors"], report["errors"]
    assert report["barge_ins"], report["turns"]
    barge = report["barge_ins"][0]
    assert barge["clear_ms"] is None  # nothing to clear on Asterisk's side
    assert barge["audible_stop_latency_ms"] is not None and barge["audible_stop_latency_ms"] <= 400
    assert report["bot"]["repeated_ms"] == 0
    turns = factory.recent[-1]._history()
    assert turns[0].role == "bot" and turns[0].interrupted
    assert "market street" in turns[2].text.lower()
