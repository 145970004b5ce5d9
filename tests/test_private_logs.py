"""What callers say and key in stays out of `ivr serve`'s log unless IVR_LOG_TRANSCRIPTS=1.

A real server (embedded engines, Twilio signatures on) and the keypad sample replayed as Twilio
would: the caller keys 4, then an order number, then says "No thanks, that's all.".
"""

from pathlib import Path

import httpx
import pytest

from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.sources import load_call
from ops_server import ServeProcess

SAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "harness" / "samples"
TOKEN = "5" * 32
ORDER_NUMBER = "1234"  # keyed in order_dtmf.yaml

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def keypad_call(env: dict[str, str]) -> tuple[ServeProcess, list[str]]:
    """Serve, replay the keypad sample, and post an unsigned webhook with a number in its URL;
    the server's log messages."""
    server = ServeProcess({"TWILIO_AUTH_TOKEN": TOKEN, **env})
    server.env["IVR_PUBLIC_URL"] = server.base
    await server.start()
    try:
        plan = await load_call(SAMPLES / "order_dtmf.yaml")
        options = ReplayOptions(url=server.media_url, auth_token=TOKEN, speed=2.0, max_call_s=120)
        record = await TwilioEmulator(plan, options).run()
        assert record.ended_by in ("caller", "bot") and not record.errors, record.errors
        await server.wait_for(lambda r: r.get("call_sid") == options.call_sid and r["msg"].startswith("call ended"), 30)
        async with httpx.AsyncClient(base_url=server.base) as http:
            refused = await http.post("/twiml/voice?From=%2B15550100777", data={"CallSid": "CA" + "7" * 32})
        assert refused.status_code == 403
        await server.wait_for(lambda r: r.get("msg", "").startswith("refused voice"), 10)
    finally:
        await server.stop()
    return server, [r.get("msg", "") for r in server.lines]


async def test_by_default_the_log_holds_neither_words_nor_keys():
    server, msgs = await keypad_call({})
    said = [m for m in msgs if m.startswith("caller said")]
    assert said and all(m.startswith("caller said ") and "word(s)" in m for m in said), said
    assert not any("thanks" in m.lower() for m in said)
    assert not [m for m in msgs if "pressed" in m], [m for m in msgs if "pressed" in m]
    assert not [m for m in msgs if ORDER_NUMBER in m or "1 2 3 4" in m]
    # A number in a webhook's query string: masked in ivr's own line and in uvicorn's access log.
    assert not [raw for raw in server.raw if "5550100777" in raw]
    assert any(m.startswith("refused voice") and "From=%2B1********77" in m for m in msgs), msgs[-5:]


async def test_ivr_log_transcripts_1_logs_them_for_debugging():
    _, msgs = await keypad_call({"IVR_LOG_TRANSCRIPTS": "1"})
    assert "caller pressed 4" in msgs
    assert [f"caller pressed {d}" for d in ORDER_NUMBER + "#"] == [m for m in msgs if m.startswith("caller pressed")][1:]
    assert any(m.startswith("caller said: ") and "thanks" in m.lower() for m in msgs), [m for m in msgs if "said" in m]
