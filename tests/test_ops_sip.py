"""A call from a customer's PBX through a SIP Domain, end to end through the real server.

The voice webhook gets SIP URIs in From/To and the PBX's X- headers as `SipHeader_X-…`; its TwiML
forwards them as stream <Parameter>s; the brain sees them in its context (the flow greets with the
account number); pressing 0 transfers back to the PBX with `<Dial><Sip>` and an X- header.
"""

import textwrap
from xml.etree import ElementTree

import httpx
import pytest

from fakes.twilio_api import FakeTwilioApi
from ivr.call import CallFactory
from ivr.telephony.twilio_control import TwilioControl
from ivr.telephony.twilio_rest import TwilioRest
from ivr.config import Settings
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.sources import load_call
from ivr.providers.registry import build
from ivr.server import create_app
from live_server import serve

ACCOUNT, TOKEN = "AC" + "7" * 32, "8" * 32

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FLOW = """
name: pbx
greeting: "Hello, account {SipHeader_X-Account}."
start: main
nodes:
  main:
    prompt: "Press zero for the front desk."
    routes:
      - dtmf: "0"
        say: "Putting you through."
        transfer: {to: "sip:desk@pbx.example.com", summary: "account {SipHeader_X-Account}"}
"""


async def test_sip_domain_call_headers_reach_the_brain_and_the_transfer_goes_back_to_the_pbx(tmp_path):
    flow = tmp_path / "pbx.yaml"
    flow.write_text(FLOW)
    env = {"IVR_STT": "local", "IVR_TTS": "local", "IVR_BRAIN": "flow", "IVR_FLOW": str(flow)}
    providers = build(Settings.from_env(env))
    await providers.load()
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    calls = []

    class Recording(CallFactory):
        def __call__(self, line):
            calls.append(super().__call__(line))
            return calls[-1]

    with serve(api.app) as api_url:
        factory = Recording(providers, controls={"twilio": TwilioControl(TwilioRest(ACCOUNT, TOKEN, base_url=api_url))})
        app = create_app(Settings.from_env(env), handler_factory=factory)
        with serve(app) as base:
            async with httpx.AsyncClient(base_url=base) as http:
                voice = await http.post("/twiml/voice", data={
                    "CallSid": "CA" + "a" * 32, "From": "sip:alice@pbx.example.com",
                    "To": "sip:ivr@acme.sip.twilio.com", "SipHeader_X-Account": "4711",
                })
            stream = ElementTree.fromstring(voice.text).find("Connect/Stream")
            params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
            assert params["From"] == "sip:alice@pbx.example.com" and params["SipHeader_X-Account"] == "4711"
            script = tmp_path / "call.yaml"
            script.write_text(textwrap.dedent("""
                name: pbx-call
                steps:
                  - dtmf: "0"
                    after: bot_silent 0.5
                  - hangup:
                    after: bot_silent 10
                """))
            options = ReplayOptions(url=stream.get("url"), speed=2.0, params=params, call_sid=params["CallSid"], max_call_s=60)
            record = await TwilioEmulator(await load_call(script), options).run()

    assert not record.errors, record.errors
    call = calls[-1]
    assert call.line.parameters["SipHeader_X-Account"] == "4711"
    greeting = call._history()[0]
    assert greeting.role == "bot" and "4711" in greeting.text  # the header reached the brain
    twimls = [u.get("Twiml", "") for u in api.updates]
    assert any("<Sip>sip:desk@pbx.example.com?X-Ivr-Summary=account%204711</Sip>" in t for t in twimls), api.updates
