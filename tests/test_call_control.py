"""Hang-ups and transfers through each carrier's call control, end to end.

A real `ivr serve` app on 127.0.0.1 takes calls the harness plays as each carrier; the bot's
transfer (the caller presses 0) and hang-up (the caller says "no thanks, that's all") must reach
that carrier's call-control API, served by a fake that checks the request as the vendor documents
it (tests/fakes/call_control.py). A control API that fails must leave the call to the stream's
end, with a log line saying so.
"""

import asyncio
import logging
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from fakes.call_control import AriChannel, FakeAri, FakePlivo, FakeTelnyx, FakeVonage
from ivr.call import CallFactory
from ivr.config import Settings
from ivr.harness.carriers import PATHS
from ivr.harness.emulator import ReplayOptions
from ivr.harness.run import replay_file
from ivr.providers.registry import build
from ivr.server import create_app
from ivr.telephony import plivo
from ivr.telephony.control import ControlError, controls_from_env
from live_server import free_port, serve
from replay_helpers import script

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TELNYX_KEY = "KEY0123456789ABCDEF"
PLIVO_ID, PLIVO_TOKEN = "MAXXXXXXXXXXXXXXXXXX", "plivo-token"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
ARI_USER, ARI_PASSWORD = "ivr", "ari-secret"
STAFF_LINE = "+15550100123"  # the example flow's {staff_line}

TRANSFER = """
    name: operator
    steps:
      - dtmf: "0"
        after: bot_speaking 1.0
      - hangup:
        after: bot_silent 10
    """
HANG_UP = """
    name: no-thanks
    steps:
      - audio: SAMPLES/no-thanks.wav
        text: "No thanks, that's all."
        after: bot_speaking 1.0
      - hangup:
        after: bot_silent 10
    """


def _rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class Stack:
    def __init__(self, ws_base, tcp_url, factory, telnyx, plivo_api, vonage, ari):
        self.ws_base, self.tcp_url, self.factory = ws_base, tcp_url, factory
        self.telnyx, self.plivo, self.vonage, self.ari = telnyx, plivo_api, vonage, ari

    def url(self, carrier: str) -> str:
        return self.tcp_url if carrier == "audiosocket" else self.ws_base + PATHS[carrier]

    def fake(self, carrier: str):
        return {"telnyx": self.telnyx, "plivo": self.plivo, "vonage": self.vonage,
                "asterisk-ws": self.ari, "audiosocket": self.ari}[carrier]

    def reset(self) -> None:
        for fake in (self.telnyx, self.plivo, self.vonage, self.ari):
            fake.requests.clear()
            fake.fail_with = None
        self.plivo.documents.clear()
        self.ari.channels.clear()


@pytest.fixture(scope="module")
def stack():
    private, public = _rsa_pair()
    fakes = FakeTelnyx(TELNYX_KEY), FakePlivo(PLIVO_ID, PLIVO_TOKEN), FakeVonage(VONAGE_APP, public), FakeAri(ARI_USER, ARI_PASSWORD)
    providers = build(Settings.from_env({}))
    asyncio.run(providers.load())
    port, tcp_port = free_port(), free_port()
    with serve(fakes[0].app) as telnyx_url, serve(fakes[1].app) as plivo_url, \
            serve(fakes[2].app) as vonage_url, serve(fakes[3].app) as ari_url:
        controls = controls_from_env({
            "TELNYX_API_KEY": TELNYX_KEY, "IVR_TELNYX_API_URL": telnyx_url + "/v2",
            "PLIVO_AUTH_ID": PLIVO_ID, "PLIVO_AUTH_TOKEN": PLIVO_TOKEN, "IVR_PLIVO_API_URL": plivo_url,
            "IVR_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "VONAGE_APPLICATION_ID": VONAGE_APP, "VONAGE_PRIVATE_KEY": private, "IVR_VONAGE_API_URL": vonage_url,
            "IVR_ASTERISK_ARI_URL": ari_url + "/ari", "IVR_ASTERISK_ARI_AUTH": f"{ARI_USER}:{ARI_PASSWORD}",
        })
        factory = CallFactory(providers, controls=controls)
        app = create_app(Settings.from_env({"IVR_AUDIOSOCKET_PORT": str(tcp_port)}), handler_factory=factory)
        with serve(app, port=port) as base:
            yield Stack(base.replace("http", "ws"), f"tcp://127.0.0.1:{tcp_port}", factory, *fakes)


def _call(stack: Stack, tmp_path, carrier: str, body: str, call_id: str):
    options = ReplayOptions(url=stack.url(carrier), carrier=carrier, max_call_s=60, call_sid=call_id)
    out = asyncio.run(replay_file(script(tmp_path, body), options, tmp_path / "out"))
    assert not out.report["errors"], out.report["errors"]
    assert out.report["call"]["ended_by"] == "bot"
    return out


def _call_id(carrier: str) -> str:
    # The id each carrier's stream names the call by: Telnyx's call_control_id, Plivo's and
    # Vonage's call UUID, the Asterisk channel, the AudioSocket UUID.
    return {"telnyx": "v3:" + uuid.uuid4().hex, "asterisk-ws": "1700000000.42"}.get(carrier, str(uuid.uuid4()))


def _ari_channels(stack: Stack, carrier: str, call_id: str) -> None:
    # An AudioSocket call is found by the IVR_CALL_ID its dialplan set; another channel first,
    # without it, makes the adapter look.
    stack.ari.channels["1700000000.1"] = AriChannel(name="PJSIP/other-00000001")
    if carrier == "audiosocket":
        stack.ari.channels["1700000000.7"] = AriChannel(variables={"IVR_CALL_ID": call_id})
    else:
        stack.ari.channels[call_id] = AriChannel(name="WebSocket/ivr-00000002")


@pytest.mark.parametrize("carrier", ["telnyx", "plivo", "vonage", "audiosocket"])
def test_a_transfer_goes_through_the_carriers_call_control(stack, tmp_path, carrier):
    stack.reset()
    call_id = _call_id(carrier)
    if carrier == "audiosocket":
        _ari_channels(stack, carrier, call_id)
    _call(stack, tmp_path, carrier, TRANSFER, call_id)
    call = stack.factory.recent[-1]
    assert any("putting you through" in t.text.lower() for t in call._history() if t.role == "bot")
    requests = [r for r in stack.fake(carrier).requests if r["method"] != "GET"]
    if carrier == "telnyx":
        [r] = requests
        assert (r["call_control_id"], r["action"]) == (call_id, "transfer")
        assert r["json"] == {"to": STAFF_LINE, "custom_headers": [{"name": "X-Ivr-Summary", "value": "Caller asked for a person."}]}
    elif carrier == "plivo":
        [r] = requests
        assert r["method"] == "POST" and r["path"] == f"/v1/Account/{PLIVO_ID}/Call/{call_id}/"
        assert r["json"]["legs"] == "aleg" and r["json"]["aleg_method"] == "POST"
        # Plivo fetched the XML the server serves there, and it dials the staff line.
        [(url, doc)] = stack.plivo.documents
        assert url == r["json"]["aleg_url"] and "<Dial><Number>15550100123</Number></Dial>" in doc, doc
    elif carrier == "vonage":
        [r] = requests
        assert r["method"] == "PUT" and r["uuid"] == call_id and r["claims"]["application_id"] == VONAGE_APP
        assert r["json"]["action"] == "transfer" and r["json"]["destination"]["type"] == "ncco"
        connect = r["json"]["destination"]["ncco"][-1]
        assert connect == {"action": "connect", "endpoint": [{"type": "phone", "number": STAFF_LINE[1:]}]}
    else:
        assert [(r["method"], r["path"].rsplit("/", 1)[-1], r["query"].get("variable")) for r in requests] == [
            ("POST", "variable", "IVR_TRANSFER_TO"), ("POST", "variable", "IVR_TRANSFER_SUMMARY"), ("POST", "continue", None)]
        assert all(r["channel"] == "1700000000.7" for r in requests)
        assert requests[0]["query"]["value"] == STAFF_LINE
        assert requests[-1]["query"] == {"context": "ivr-transfer", "extension": "s", "priority": "1"}


@pytest.mark.parametrize("carrier", ["telnyx", "plivo", "vonage", "asterisk-ws"])
def test_a_hang_up_goes_through_the_carriers_call_control(stack, tmp_path, carrier):
    stack.reset()
    call_id = _call_id(carrier)
    if carrier == "asterisk-ws":
        _ari_channels(stack, carrier, call_id)
    _call(stack, tmp_path, carrier, HANG_UP, call_id)
    call = stack.factory.recent[-1]
    assert "thanks for calling" in call._history()[-1].text.lower()
    requests = [r for r in stack.fake(carrier).requests if r["method"] != "GET"]
    [r] = requests
    if carrier == "telnyx":
        assert (r["call_control_id"], r["action"], r["json"]) == (call_id, "hangup", {})
    elif carrier == "plivo":
        assert (r["method"], r["path"]) == ("DELETE", f"/v1/Account/{PLIVO_ID}/Call/{call_id}/")
    elif carrier == "vonage":
        assert (r["method"], r["uuid"], r["json"]) == ("PUT", call_id, {"action": "hangup"})
    else:
        assert (r["method"], r["channel"]) == ("DELETE", call_id)
        assert call_id not in stack.ari.channels


def test_a_failing_control_api_leaves_the_call_to_the_streams_end(stack, tmp_path, caplog):
    stack.reset()
    stack.telnyx.fail_with = 500
    call_id = _call_id("telnyx")
    with caplog.at_level(logging.WARNING, logger="ivr"):
        _call(stack, tmp_path, "telnyx", TRANSFER, call_id)
    [r] = stack.telnyx.requests
    assert r["action"] == "transfer"
    assert any("Telnyx Call Control" in m and "HTTP 500" in m and "ending the stream instead" in m for m in caplog.messages), caplog.messages
    assert stack.factory.recent[-1].line.transfer_to.target == STAFF_LINE


def test_ari_refuses_a_transfer_outside_stasis_and_the_dialplan_goes_on(stack, tmp_path, caplog):
    """A plain dialplan's channel is not in Stasis: Asterisk answers 409, and the bot ends the
    socket without HANGUP so the dialplan after Dial() takes the caller."""
    stack.reset()
    call_id = _call_id("asterisk-ws")
    _ari_channels(stack, "asterisk-ws", call_id)
    stack.ari.channels[call_id].stasis = False
    with caplog.at_level(logging.WARNING, logger="ivr"):
        _call(stack, tmp_path, "asterisk-ws", TRANSFER, call_id)
    assert any("409" in m and "ending the stream instead" in m for m in caplog.messages), caplog.messages
    assert call_id in stack.ari.channels  # not hung up


def test_control_errors_name_the_request_never_the_secret(stack):
    controls = controls_from_env({"TELNYX_API_KEY": "wrong-key", "IVR_TELNYX_API_URL": stack.ws_base.replace("ws", "http") + "/nowhere"})

    async def attempt():
        with pytest.raises(ControlError) as caught:
            await controls["telnyx"].hang_up("v3:abc")
        return str(caught.value)

    message = asyncio.run(attempt())
    assert "HTTP 404" in message and "wrong-key" not in message


def test_controls_come_from_the_environment_only_when_complete():
    assert controls_from_env({}) == {}
    assert controls_from_env({"PLIVO_AUTH_ID": "MA1"}) == {}  # no token: no control
    both = controls_from_env({"IVR_ASTERISK_ARI_URL": "http://pbx:8088/ari", "IVR_ASTERISK_ARI_AUTH": "u:p"})
    assert both["asterisk-ws"] is both["audiosocket"]
    with pytest.raises(ValueError, match="IVR_ASTERISK_ARI_AUTH"):
        controls_from_env({"IVR_ASTERISK_ARI_URL": "http://pbx:8088/ari", "IVR_ASTERISK_ARI_AUTH": "nocolon"})


def test_plivo_transfer_xml_is_signed_and_dials_only_a_number_or_sip_uri():
    from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

    client = TestClient(create_app(Settings.from_env({"PLIVO_AUTH_TOKEN": PLIVO_TOKEN, "IVR_PUBLIC_URL": "https://bot.example.com"}),
                                   handler_factory=lambda line: None))
    url = "https://bot.example.com/plivo/transfer?to=sip%3Adesk%40pbx.example.com&summary=wants+rye"
    params = {"CallUUID": "c-1"}
    sig = get_signature_v3(PLIVO_TOKEN.encode(), construct_post_url(url, dict(params)).decode(), b"n1").decode()
    path = url.removeprefix("https://bot.example.com")
    ok = client.post(path, data=params, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "n1"})
    assert ok.status_code == 200, ok.text
    assert '<Dial sipHeaders="IvrSummary=wants%20rye"><User>sip:desk@pbx.example.com</User></Dial>' in ok.text
    assert client.post(path, data=params).status_code == 403
    bad = "/plivo/transfer?to=%3C%2FDial%3E"
    sig = get_signature_v3(PLIVO_TOKEN.encode(), construct_post_url("https://bot.example.com" + bad, dict(params)).decode(), b"n2").decode()
    assert client.post(bad, data=params, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "n2"}).status_code == 400


def test_without_call_control_an_asterisk_dialplan_asks_how_the_call_goes_on(stack, tmp_path):
    """No ARI (here: it fails): the bot only ends the stream, and the dialplan's CURL() of
    /asterisk/outcome/{id} learns it was a transfer and to whom, once."""
    import httpx
    from urllib.parse import parse_qs

    stack.reset()
    call_id = _call_id("asterisk-ws")
    _ari_channels(stack, "asterisk-ws", call_id)
    stack.ari.fail_with = 500
    _call(stack, tmp_path, "asterisk-ws", TRANSFER, call_id)
    base = stack.ws_base.replace("ws", "http", 1)
    answer = httpx.get(f"{base}/asterisk/outcome/{call_id}")
    assert answer.status_code == 200
    form = parse_qs(answer.text)
    assert form["action"] == ["transfer"] and form["to"] == [STAFF_LINE] and form["summary"][0]
    assert httpx.get(f"{base}/asterisk/outcome/{call_id}").text == "action=none"  # taken once
    assert httpx.get(f"{base}/asterisk/outcome/no-such-call").text == "action=none"
