"""Outbound calls through POST /calls against a fake Twilio REST API on loopback (issue 11).

No media here (the callee holds the line without a stream): the REST request, the bearer token,
the signed status callbacks and what the store and metrics make of them.
"""

import json
import xml.etree.ElementTree as ET

import httpx
import pytest
from prometheus_client import REGISTRY

from fakes.twilio_api import Callee, FakeTwilioApi
from ivr.telephony.twilio_rest import TwilioRest
from ivr.config import Settings
from ivr.outbound.store import CallStore
from ivr.server import create_app
from ivr.session import ListeningHandler
from live_server import serve

ACCOUNT, TOKEN = "AC" + "3" * 32, "4" * 32
API_TOKEN = "t" * 32
FROM, TO = "+15550001111", "+15550002222"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # aiohttp BasicAuth in twilio 9.13


@pytest.fixture()
def stack(tmp_path):
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    settings = Settings.from_env({"IVR_API_TOKEN": API_TOKEN, "TWILIO_AUTH_TOKEN": TOKEN, "IVR_OUTBOUND_DIR": str(tmp_path),
                                  "IVR_CALLER_ID": FROM})
    app = create_app(settings, handler_factory=ListeningHandler)
    with serve(api.app) as api_url, serve(app) as base:
        app.state.ivr.outbound.rest = TwilioRest(ACCOUNT, TOKEN, base_url=api_url)
        yield base, api, CallStore(tmp_path)


def post_call(base, body, token=API_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{base}/calls", json=body, headers=headers, timeout=30)


def metric(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_post_calls_sends_stream_twiml_parameters_and_amd_options(stack):
    base, api, store = stack
    api.default_callee = Callee(answer="answered", answered_by="human")
    completed_before = metric("ivr_outbound_status_total", status="completed")
    reply = post_call(base, {"to": TO, "params": {"name": "Sam", "order_number": "4572"}})
    assert reply.status_code == 201, reply.text
    placed = reply.json()
    assert placed["sid"].startswith("CA") and placed["id"].startswith("ob-")
    api.wait_done(placed["sid"])

    form = api.created[-1]
    assert form["To"] == TO and form["From"] == FROM  # the caller ID came from IVR_CALLER_ID
    assert form["StatusCallback"] == f"{base}/outbound/status"
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert form["MachineDetection"] == "DetectMessageEnd" and form["AsyncAmd"] == "true"
    assert form["AsyncAmdStatusCallback"] == f"{base}/outbound/amd"
    stream = ET.fromstring(form["Twiml"]).find("./Connect/Stream")
    assert stream.get("url") == base.replace("http://", "ws://") + "/media"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params["name"] == "Sam" and params["order_number"] == "4572"
    assert params["From"] == FROM and params["To"] == TO
    assert params["IvrDirection"] == "outbound" and params["IvrAmd"] == "1" and params["IvrCallId"] == placed["id"]

    # Every callback was signed, and accepted.
    assert {c["params"]["CallStatus"] for c in api.callbacks if "CallStatus" in c["params"]} == {
        "initiated", "ringing", "in-progress", "completed"}
    assert all(c["status_code"] == 204 for c in api.callbacks)
    [view] = store.calls()
    assert view.sid == placed["sid"] and view.status == "completed" and view.answered_by == "human"
    assert view.params == {"name": "Sam", "order_number": "4572"} and view.outcome == "completed-human"
    assert metric("ivr_outbound_status_total", status="completed") == completed_before + 1

    listed = httpx.get(f"{base}/outbound/calls", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
    assert listed[0]["sid"] == placed["sid"] and listed[0]["outcome"] == "completed-human"
    assert TO not in json.dumps(listed)  # numbers masked


@pytest.mark.parametrize("answer", ["busy", "no-answer", "failed"])
def test_unanswered_calls_are_recorded_with_their_outcome(stack, answer):
    base, api, store = stack
    api.callees[TO] = Callee(answer=answer)
    reply = post_call(base, {"to": TO, "from": FROM})
    assert reply.status_code == 201
    api.wait_done(reply.json()["sid"])
    [view] = store.calls()
    assert view.status == answer and view.final and view.outcome == answer


def test_unauthenticated_post_calls_is_refused_and_places_nothing(stack):
    base, api, store = stack
    assert post_call(base, {"to": TO}, token=None).status_code == 401
    assert post_call(base, {"to": TO}, token="x" * 32).status_code == 401
    assert httpx.post(f"{base}/calls", json={"to": TO}, headers={"Authorization": f"Basic {API_TOKEN}"}).status_code == 401
    assert httpx.get(f"{base}/outbound/calls").status_code == 401
    assert api.created == [] and store.calls() == []


def test_calls_api_is_off_without_a_token(tmp_path):
    app = create_app(Settings.from_env({"IVR_OUTBOUND_DIR": str(tmp_path)}), handler_factory=ListeningHandler)
    with serve(app) as base:
        assert post_call(base, {"to": TO}, token=None).status_code == 403
        assert post_call(base, {"to": TO}).status_code == 403


def test_unsigned_or_forged_callbacks_are_refused(stack):
    base, api, store = stack
    before = metric("ivr_signature_failures_total", route="outbound_status")
    form = {"CallSid": "CA" + "9" * 32, "CallStatus": "completed"}
    assert httpx.post(f"{base}/outbound/status", data=form).status_code == 403
    assert httpx.post(f"{base}/outbound/status", data=form, headers={"X-Twilio-Signature": "Zm9yZ2Vk"}).status_code == 403
    amd = {"CallSid": "CA" + "9" * 32, "AnsweredBy": "machine_end_beep"}
    assert httpx.post(f"{base}/outbound/amd", data=amd).status_code == 403
    assert store.calls() == []
    assert metric("ivr_signature_failures_total", route="outbound_status") == before + 2


@pytest.mark.parametrize("body, fragment", [
    ({"to": "5550002222"}, "E.164"),
    ({"to": TO, "params": {"From": "+1999"}}, "set by the server"),
    ({"to": TO, "params": {"IvrAmd": "0"}}, "set by the server"),
    ({"to": TO, "params": {"bad name": "x"}}, "not a name"),
    ({"to": TO, "flow": "../../etc/passwd"}, "flow"),
    ({"to": TO, "flow": "nosuchflow"}, "no flow named"),
    ({"to": TO + "\n"}, "E.164"),  # a pattern ending in $ would take the newline
    ({"to": "sip:alice@example.com\n"}, "E.164"),
    ({"to": TO, "from": FROM + "\n"}, "from"),
    ({"to": TO, "from": "client:alice\n"}, "from"),
    ({"to": [TO]}, "to: expected a string"),
    ({"to": TO, "amd": "no"}, "amd"),
    ({"to": TO, "params": {"name": [[["Sam"]]]}}, "params.name"),
])
def test_bad_requests_are_refused_before_twilio(stack, body, fragment):
    base, api, _ = stack
    reply = post_call(base, body)
    assert reply.status_code == 400 and fragment in reply.json()["error"], reply.text
    assert api.created == []


def test_twilio_refusal_is_reported_and_recorded(stack):
    base, api, store = stack
    api.refuse.add(TO)
    reply = post_call(base, {"to": TO})
    assert reply.status_code == 422 and "21211" in reply.json()["error"]
    [view] = store.calls()
    assert view.not_placed and view.outcome == "not-placed"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("body", [
    '{"to": ' + nested(8000) + "}",  # deeper than the parser follows (and within the size limit)
    '{"to": ' + nested(1000) + "}",  # within the parser's limit, too deep to turn into text
    '{"to": "+15550002222", "params": {"name": ' + nested(1000) + "}}",
])
def test_deeply_nested_json_is_a_bad_request(stack, body):
    base, api, _ = stack
    reply = httpx.post(f"{base}/calls", content=body, timeout=30,
                       headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert api.created == []


async def send_head_and_part(base: str, head: str, part: bytes) -> bytes:
    """Send a request's head and only part of its body; the status line of the answer."""
    import asyncio
    from urllib.parse import urlsplit

    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head.encode() + part)
        await writer.drain()
        # The rest of the body never comes: only a server that stops reading at its limit answers.
        return await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_large_body_is_refused_without_reading_it_all(stack, framing):
    from ivr.outbound.routes import MAX_BODY

    base, api, _ = stack
    auth = f"Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n"
    if framing == "content-length":
        head = f"POST /calls HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {100 * 1024 * 1024}\r\n\r\n"
        part = b" " * 1024
    else:
        head = f"POST /calls HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
        chunk = b" " * 4096
        part = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * (MAX_BODY // len(chunk) + 2)
    status = await send_head_and_part(base, head, part)
    assert status.startswith(b"HTTP/1.1 413"), status
    assert api.created == []
