import asyncio
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote

import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from twilio.request_validator import RequestValidator

import twilio_messages as tm
from ivr.config import Settings
from ivr.server import create_app
from ivr.session import ListeningHandler
from ivr.telephony.twilio import Stop

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://bot.example.com"
TWIML_DIR = Path(__file__).resolve().parent.parent / "twiml"


class Recorder(ListeningHandler):
    """The default handler, keeping every event it is given."""

    instances: list["Recorder"] = []

    def __init__(self, line):
        super().__init__(line)
        self.events = []
        self.closed_with = None
        Recorder.instances.append(self)

    async def on_event(self, event):
        self.events.append(event)
        await super().on_event(event)

    async def close(self, reason):
        self.closed_with = reason


@pytest.fixture(autouse=True)
def _reset():
    Recorder.instances.clear()


def make_client(**settings) -> TestClient:
    s = Settings.from_env({}, **settings)
    return TestClient(create_app(s, handler_factory=Recorder), base_url="http://bot.example.com")


def metric(name, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def sign(url, params=None) -> str:
    return RequestValidator(TOKEN).compute_signature(url, params or {})


# --- TwiML ---------------------------------------------------------------------------------


def render_template(name: str, **values: str) -> str:
    """Render a twiml/ file as a TwiML Bin would ({{Name}} -> XML-escaped value)."""
    text = (TWIML_DIR / name).read_text()

    def sub(m):
        v = values[m.group(1)]
        return v.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")

    return re.sub(r"\{\{(\w+)\}\}", sub, text)


def canonical(xml: str) -> str:
    root = ET.fromstring(xml.encode())
    for el in root.iter():
        el.text = (el.text or "").strip() or None
        el.tail = None
    return ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)


def test_voice_webhook_answers_with_the_documented_stream_twiml():
    form = {"CallSid": "CA123", "From": "+15551234567", "To": "+15557654321", "AccountSid": tm.ACCOUNT_SID}
    with make_client(public_url=PUBLIC) as client:
        r = client.post("/twiml/voice", data=form)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    expected = render_template("answer.xml", PublicHost="bot.example.com", From="+15551234567", To="+15557654321", CallSid="CA123")
    assert canonical(r.text) == canonical(expected)
    assert 'url="wss://bot.example.com/media"' in r.text


def test_public_url_comes_from_the_request_when_not_configured():
    with make_client() as client:
        r = client.post("/twiml/voice", data={"CallSid": "CA1"}, headers={"host": "abc.tunnel.example:8443"})
    assert 'url="ws://abc.tunnel.example:8443/media"' in r.text


def test_forwarded_host_from_a_trusted_proxy_is_honoured():
    with make_client() as client:
        r = client.post("/twiml/voice", data={"CallSid": "CA1"}, headers={"x-forwarded-host": "bot.example.org"})
    assert 'url="ws://bot.example.org/media"' in r.text


def test_sip_headers_travel_into_the_stream_parameters():
    form = {"CallSid": "CA9", "From": "sip:alice@pbx.example.com", "To": "sip:ivr@x.sip.twilio.com", "SipHeader_X-Account": "77"}
    with make_client(public_url=PUBLIC) as client:
        r = client.post("/twiml/voice", data=form)
    assert '<Parameter name="SipHeader_X-Account" value="77" />' in r.text


@pytest.mark.parametrize(
    "doc,build",
    [
        ("fallback.xml", lambda t: t.fallback()),
        ("busy.xml", lambda t: t.busy()),
        ("transfer-number.xml", lambda t: t.transfer_number("+15550001111")),
        ("transfer-sip.xml", lambda t: t.transfer_sip("sip:desk@pbx.example.com", "wants a refund")),
    ],
)
def test_served_twiml_matches_the_pasteable_documents(doc, build):
    from ivr.telephony import twiml

    values = {"Target": "+15550001111"} if "number" in doc else {"Target": "sip:desk@pbx.example.com", "Summary": quote("wants a refund", safe="")}
    assert canonical(build(twiml)) == canonical(render_template(doc, **values))


def test_fallback_route_serves_the_fallback_document():
    with make_client() as client:
        r = client.post("/twiml/fallback", data={"CallSid": "CA1"})
    assert canonical(r.text) == canonical(render_template("fallback.xml"))


def test_over_max_calls_the_webhook_says_busy():
    with make_client(max_calls=1) as client:
        first = client.post("/twiml/voice", data={"CallSid": "CA1"})
        second = client.post("/twiml/voice", data={"CallSid": "CA2"})
        again = client.post("/twiml/voice", data={"CallSid": "CA1"})  # Twilio retrying the same call
    assert "<Connect>" in first.text and "<Connect>" in again.text
    assert canonical(second.text) == canonical(render_template("busy.xml"))


# --- signatures ----------------------------------------------------------------------------


def test_webhook_with_valid_signature_is_served():
    form = {"CallSid": "CA1", "From": "+15551234567", "To": "+15557654321"}
    sig = sign(PUBLIC + "/twiml/voice", form)
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        r = client.post("/twiml/voice", data=form, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 200 and "<Connect>" in r.text


@pytest.mark.parametrize("headers", [{}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}])
def test_webhook_without_a_valid_signature_gets_403_and_nothing_else(headers):
    before = metric("ivr_webhooks_total", route="voice", outcome="stream")
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        r = client.post("/twiml/voice", data={"CallSid": "CA1"}, headers=headers)
        assert r.status_code == 403 and "<Response" not in r.text
        assert asyncio.run(client.app.state.ivr.admission.reserve("CA-other"))  # no line was reserved
    assert metric("ivr_webhooks_total", route="voice", outcome="stream") == before


def test_signature_over_tampered_params_is_refused():
    sig = sign(PUBLIC + "/twiml/voice", {"CallSid": "CA1", "From": "+1555"})
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        r = client.post("/twiml/voice", data={"CallSid": "CA1", "From": "+1666"}, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 403


def test_status_callback_is_signed_too():
    form = {"CallSid": "CA1", "StreamSid": tm.STREAM_SID, "StreamEvent": "stream-started"}
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        assert client.post("/twiml/status", data=form).status_code == 403
        ok = client.post("/twiml/status", data=form, headers={"X-Twilio-Signature": sign(PUBLIC + "/twiml/status", form)})
    assert ok.status_code == 204


def test_websocket_upgrade_with_valid_signature_is_accepted():
    sig = sign("wss://bot.example.com/media")
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        with client.websocket_connect("/media", headers={"X-Twilio-Signature": sig}) as ws:
            ws.send_text(tm.CONNECTED)
            ws.send_text(tm.start())
            ws.send_text(tm.stop(2))
    assert isinstance(Recorder.instances[0].events[-1], Stop)


@pytest.mark.parametrize("sig_url", [None, "https://bot.example.com/media", "wss://evil.example.com/media"])
def test_websocket_upgrade_without_valid_signature_is_refused_with_403(sig_url):
    from starlette.testclient import WebSocketDenialResponse

    headers = {"X-Twilio-Signature": sign(sig_url)} if sig_url else {}
    with make_client(public_url=PUBLIC, twilio_auth_token=TOKEN) as client:
        with pytest.raises(WebSocketDenialResponse) as info:
            with client.websocket_connect("/media", headers=headers):
                pass
    assert info.value.status_code == 403
    assert Recorder.instances == []


# --- the media stream ----------------------------------------------------------------------


def test_malformed_messages_are_skipped_and_the_call_goes_on():
    bad = [
        "{broken",
        '{"event": "nope"}',
        tm.media(2, 1, 0, payload="***"),
        tm.media(2, 1, 0, payload=""),
        tm.media(2, 1, 0, payload=b"\xff" * 9000),
        tm.start(),
        tm.media(2, 1, 0, stream_sid="MZwrong"),
        "x" * 70000,
    ]
    before = {k: metric("ivr_protocol_errors_total", kind=k) for k in ("bad_json", "unknown_event", "bad_base64", "empty_payload", "oversized_payload", "duplicate_start", "stream_sid_mismatch", "oversized_message", "binary_frame", "media_before_start")}
    frames_before = metric("ivr_frames_in_total")
    with make_client() as client:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tm.CONNECTED)
            ws.send_text(tm.media(1, 1, 0))  # before start
            ws.send_text(tm.start())
            for m in bad:
                ws.send_text(m)
            ws.send_bytes(b"\x00\x01")
            ws.send_text(tm.media(3, 1, 0, b"\x12" * 160))
            ws.send_text(tm.stop(4))
    rec = Recorder.instances[0]
    assert [type(e).__name__ for e in rec.events] == ["Start", "Media", "Stop"]
    assert rec.events[1].payload == b"\x12" * 160
    assert metric("ivr_frames_in_total") == frames_before + 1
    for kind, n in before.items():
        assert metric("ivr_protocol_errors_total", kind=kind) >= n + 1, kind


def test_caller_audio_is_reframed_and_lost_audio_becomes_silence():
    with make_client() as client:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tm.start())
            ws.send_text(tm.media(2, 1, 0, b"\x01" * 80))
            ws.send_text(tm.media(3, 2, 10, b"\x01" * 240))  # 40 ms in two odd pieces
            ws.send_text(tm.media(6, 5, 80, b"\x01" * 160))  # 40 ms lost before this
            ws.send_text(tm.stop(7))
    rec = Recorder.instances[0]
    assert rec.caller_ms == 40 + 40 + 20
    assert rec.events[3].gap_bytes == 320


def test_active_calls_gauge_follows_the_call():
    with make_client() as client:
        base = metric("ivr_active_calls")
        with client.websocket_connect("/media") as ws:
            ws.send_text(tm.start())
            ws.send_text(tm.media(2, 1, 0))
            ws.send_text(tm.dtmf(3, "1"))  # a round trip through the server
            while not Recorder.instances or not Recorder.instances[0].digits:
                pass
            assert metric("ivr_active_calls") == base + 1
            ws.send_text(tm.stop(4))
        assert metric("ivr_active_calls") == base


def test_stream_over_max_calls_is_closed_without_a_handler():
    with make_client(max_calls=1) as client:
        with client.websocket_connect("/media") as first:
            first.send_text(tm.start())
            first.send_text(tm.dtmf(2, "1"))
            while not Recorder.instances or not Recorder.instances[0].digits:
                pass
            with client.websocket_connect("/media") as second:
                second.send_text(tm.start(stream_sid="MZsecond"))
                with pytest.raises(WebSocketDisconnect):
                    second.receive_text()
            first.send_text(tm.stop(3))
    assert len(Recorder.instances) == 1


def test_health_ready_and_metrics():
    with make_client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        text = client.get("/metrics").text
    for name in ("ivr_active_calls", "ivr_frames_in_total", "ivr_frames_out_total", "ivr_protocol_errors_total"):
        assert name in text


def test_capture_writes_a_replayable_file_of_the_inbound_messages(tmp_path):
    from ivr.harness.capture import read_capture
    from ivr.harness.sources import load_call

    with make_client(capture_dir=str(tmp_path)) as client:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tm.CONNECTED)
            ws.send_text(tm.start())
            ws.send_text(tm.media(2, 1, 0, b"\x10" * 160))
            ws.send_text("{bad")
            ws.send_text(tm.stop(3))
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1 and tm.CALL_SID in files[0].name
    messages = [m.text for m in read_capture(files[0])]
    assert messages == [tm.CONNECTED, tm.start(), tm.media(2, 1, 0, b"\x10" * 160), "{bad", tm.stop(3)]
    import asyncio

    plan = asyncio.run(load_call(files[0]))
    assert plan.kind == "capture"


def test_no_capture_file_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with make_client() as client:
        with client.websocket_connect("/media") as ws:
            ws.send_text(tm.start())
            ws.send_text(tm.media(2, 1, 0))
            ws.send_text(tm.stop(3))
    assert list(tmp_path.rglob("*")) == []
