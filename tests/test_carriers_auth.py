"""Who may open a call on each carrier: answer webhooks and streams, signed right and wrong,
through the real app (Starlette's test client; no engines)."""

import base64
import hashlib
import time

import jwt
import orjson
import pytest
from nacl.signing import SigningKey
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ivr.config import Settings
from ivr.server import create_app
from ivr.session import ListeningHandler
from ivr.telephony import exotel, plivo, stream_token, telnyx, vonage
from ivr.telephony.twilio import Dtmf, Media, Start

FRAME = bytes(160)


class Recorder(ListeningHandler):
    instances: list["Recorder"] = []

    def __init__(self, line):
        super().__init__(line)
        self.events = []
        Recorder.instances.append(self)

    async def on_event(self, event):
        self.events.append(event)
        await super().on_event(event)


def client(**env) -> TestClient:
    Recorder.instances.clear()
    return TestClient(create_app(Settings.from_env(env), handler_factory=Recorder), base_url="https://bot.example.com")


def test_telnyx_texml_needs_a_fresh_ed25519_signature():
    key = SigningKey.generate()
    c = client(TELNYX_PUBLIC_KEY=base64.b64encode(bytes(key.verify_key)).decode(), IVR_PUBLIC_URL="https://bot.example.com")
    body = b"CallSid=v3%3Aabc&From=%2B13125550100&To=%2B13125550101"
    ts = str(int(time.time()))
    sig = base64.b64encode(key.sign(ts.encode() + b"|" + body).signature).decode()
    headers = {"content-type": "application/x-www-form-urlencoded", "telnyx-timestamp": ts}
    ok = c.post("/telnyx/texml", content=body, headers={**headers, "telnyx-signature-ed25519": sig})
    assert ok.status_code == 200
    assert 'url="wss://bot.example.com/media/telnyx"' in ok.text and "+13125550100" in ok.text
    forged = c.post("/telnyx/texml", content=body.replace(b"0100", b"0199"), headers={**headers, "telnyx-signature-ed25519": sig})
    assert forged.status_code == 403


def test_telnyx_stream_token_is_checked_on_the_upgrade():
    c = client(IVR_TELNYX_STREAM_TOKEN="tok-123")
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect("/media/telnyx") as ws:
            ws.receive_text()
    side = telnyx.TelnyxSender("s1", "v3:call")
    with c.websocket_connect("/media/telnyx", headers={"x-telnyx-streaming-auth-token": "tok-123"}) as ws:
        ws.send_text(side.connected())
        ws.send_text(side.start())
        ws.send_text(side.media(FRAME, 0))
        ws.send_text(side.dtmf("5"))
        ws.send_text(side.stop())
    events = Recorder.instances[-1].events
    assert [type(e) for e in events[:3]] == [Start, Media, Dtmf]


def test_plivo_answer_is_signed_and_its_stream_must_bring_back_the_token():
    token = "plivo-auth-token"
    c = client(PLIVO_AUTH_TOKEN=token, IVR_PUBLIC_URL="https://bot.example.com")
    params = {"CallUUID": "call-42", "From": "+14155550100", "To": "+14155550101"}
    from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

    nonce = "0123456789"
    sig = get_signature_v3(token.encode(), construct_post_url("https://bot.example.com/plivo/answer", dict(params)).decode(), nonce.encode()).decode()
    ok = c.post("/plivo/answer", data=params, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce})
    assert ok.status_code == 200, ok.text
    minted = stream_token.mint(token, "call-42")
    assert f"ivr_token={minted}" in ok.text and "wss://bot.example.com/media/plivo" in ok.text
    bad = c.post("/plivo/answer", data={**params, "From": "+1999"}, headers={"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": nonce})
    assert bad.status_code == 403
    # A stream for call-42 without the token is refused after its start; with it, it runs.
    with c.websocket_connect("/media/plivo") as ws:
        ws.send_text(plivo.PlivoSender("s", "call-42", extra_headers="ivr_token=forged").start())
        with pytest.raises(WebSocketDisconnect):
            ws.receive_text()
    assert not Recorder.instances
    with c.websocket_connect("/media/plivo") as ws:
        side = plivo.PlivoSender("s", "call-42", extra_headers=f"ivr_token={minted}")
        ws.send_text(side.start())
        ws.send_text(side.media(FRAME, 0))
    assert [type(e) for e in Recorder.instances[-1].events[:2]] == [Start, Media]


def test_vonage_answer_needs_its_jwt_and_the_ncco_carries_the_token():
    secret = "vonage-signature-secret-long-enough-for-hs256"
    c = client(VONAGE_SIGNATURE_SECRET=secret, IVR_PUBLIC_URL="https://bot.example.com")
    query = "uuid=u-1&from=447700900000&to=447700900001"
    signed = jwt.encode({"iat": int(time.time())}, secret, algorithm="HS256")
    ok = c.get(f"/vonage/answer?{query}", headers={"authorization": f"Bearer {signed}"})
    assert ok.status_code == 200
    endpoint = orjson.loads(ok.content)[0]["endpoint"][0]
    assert endpoint["uri"] == "wss://bot.example.com/media/vonage"
    assert endpoint["headers"]["ivr_token"] == stream_token.mint(secret, "u-1")
    assert c.get(f"/vonage/answer?{query}").status_code == 403
    body = b'{"uuid":"u-2"}'
    wrong_hash = jwt.encode({"iat": int(time.time()), "payload_hash": hashlib.sha256(b"other").hexdigest()}, secret, algorithm="HS256")
    assert c.post("/vonage/answer", content=body, headers={"authorization": f"Bearer {wrong_hash}",
                                                           "content-type": "application/json"}).status_code == 403
    with c.websocket_connect("/media/vonage") as ws:
        ws.send_text(vonage.VonageSender("u-1", headers={"ivr_token": "nope"}).connected())
        with pytest.raises(WebSocketDisconnect):
            ws.receive_text()
    assert not Recorder.instances


def test_exotel_and_asterisk_take_basic_credentials_on_the_upgrade():
    c = client(IVR_EXOTEL_BASIC_AUTH="key:token", IVR_ASTERISK_BASIC_AUTH="ast:pw")
    for path in ("/media/exotel", "/media/asterisk"):
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(path, headers={"authorization": "Basic " + base64.b64encode(b"key:wrong").decode()}) as ws:
                ws.receive_text()
    good = {"authorization": "Basic " + base64.b64encode(b"key:token").decode()}
    with c.websocket_connect("/media/exotel", headers=good) as ws:
        side = exotel.ExotelSender("MZ1", "CA1")
        ws.send_text(side.connected())
        ws.send_text(side.start())
        ws.send_text(side.media(FRAME * 5, 0))
        ws.send_text(side.stop())
    assert [type(e) for e in Recorder.instances[-1].events[:2]] == [Start, Media]


def test_the_asterisk_outcome_takes_the_same_basic_credentials():
    c = client(IVR_ASTERISK_BASIC_AUTH="ast:pw")
    assert c.get("/asterisk/outcome/abc").status_code == 403
    wrong = {"authorization": "Basic " + base64.b64encode(b"ast:nope").decode()}
    assert c.get("/asterisk/outcome/abc", headers=wrong).status_code == 403
    good = {"authorization": "Basic " + base64.b64encode(b"ast:pw").decode()}
    answer = c.get("/asterisk/outcome/abc", headers=good)
    assert (answer.status_code, answer.text) == (200, "action=none")


def test_once_any_secret_is_set_a_carrier_without_its_own_is_refused():
    c = client(TWILIO_AUTH_TOKEN="12345678901234567890123456789012")
    for path in ("/media/telnyx", "/media/plivo", "/media/exotel", "/media/vonage", "/media/asterisk"):
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(path) as ws:
                ws.receive_text()
    assert not Recorder.instances
