"""The web phone's access rules, its side channel, the capture it extends and `ivr serve`'s notice.

The browser itself is driven in tests/test_webphone_browser.py.
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

import twilio_messages as tm
from ivr.call.turn import BotTurn
from ivr.call.events import cut_event
from ivr.config import ConfigError, Settings
from ivr.harness.capture import CaptureWriter, read_capture
from ivr.harness.sources import load_capture
from ivr.server import create_app
from ivr.telephony.twilio import Start, Stop
from ivr.web import listener_for, startup_lines
from ivr.web.access import COOKIE, WebAccess
from ivr.web.hub import EventHub

PUBLIC = "https://bot.example.com"
TWILIO_TOKEN = "1" * 32
WEB_TOKEN = "web-phone-token-0123456789"
SID = "MZ" + "a" * 32


class Recorder:
    instances: list["Recorder"] = []

    def __init__(self, line):
        self.line = line
        self.events = []
        Recorder.instances.append(self)

    async def on_event(self, event):
        self.events.append(event)

    async def close(self, reason):
        pass


@pytest.fixture(autouse=True)
def _reset():
    Recorder.instances.clear()


def client(base_url: str = "http://127.0.0.1:8080", **settings) -> TestClient:
    s = Settings.from_env({}, **settings)
    return TestClient(create_app(s, handler_factory=Recorder), base_url=base_url)


def ws_status(c: TestClient, path: str, headers: dict | None = None) -> int:
    """The HTTP status of a WebSocket upgrade (101 when accepted, then closed by us)."""
    # The test client's sockets go to "testserver" whatever its base URL: say the host ourselves.
    headers = {"host": c.base_url.netloc.decode(), **(headers or {})}
    try:
        with c.websocket_connect(path, headers=headers) as ws:
            if path == "/media":
                ws.send_text(tm.CONNECTED)
                ws.send_text(tm.start())
                ws.send_text(tm.stop(2))
            return 101
    except WebSocketDenialResponse as denied:
        return denied.status_code


# --- a public server ---------------------------------------------------------------------------


def test_public_url_without_token_refuses_the_phone_and_its_sockets():
    with client(PUBLIC, public_url=PUBLIC, webphone=True, twilio_auth_token=TWILIO_TOKEN) as c:
        page = c.get("/phone")
        assert page.status_code == 403 and "IVR_WEBPHONE_TOKEN" in page.text
        assert c.get("/phone/static/phone.js").status_code == 403
        assert c.get("/calls").status_code == 403
        assert ws_status(c, f"/phone/events?streamSid={SID}") == 403
        origin = {"Origin": PUBLIC}
        assert ws_status(c, "/media", origin) == 403  # no Twilio signature, no web phone
        # Even the right token cannot sign in when none is configured.
        assert c.post("/phone/login", data={"token": WEB_TOKEN}, follow_redirects=False).status_code == 403
    assert Recorder.instances == []


def test_public_url_with_token_needs_it_on_every_request():
    with client(PUBLIC, public_url=PUBLIC, twilio_auth_token=TWILIO_TOKEN, webphone=True, webphone_token=WEB_TOKEN) as c:
        page = c.get("/phone")
        assert page.status_code == 401 and 'action="/phone/login"' in page.text  # the sign-in form
        assert ws_status(c, f"/phone/events?streamSid={SID}") == 401
        assert ws_status(c, "/media", {"Origin": PUBLIC}) == 403
        c.cookies.set(COOKIE, "0" * 64)  # a forged session
        assert c.get("/phone").status_code == 401
        assert ws_status(c, "/media", {"Origin": PUBLIC}) == 403
        c.cookies.clear()

        wrong = c.post("/phone/login", data={"token": WEB_TOKEN + "x"}, follow_redirects=False)
        assert wrong.status_code == 401 and COOKIE not in wrong.cookies
        right = c.post("/phone/login", data={"token": WEB_TOKEN}, follow_redirects=False)
        assert right.status_code == 303 and right.headers["location"] == "/phone"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie
        assert WEB_TOKEN not in cookie  # the cookie is derived from the token, not the token
        c.cookies.set(COOKIE, right.cookies[COOKIE])
        assert c.get("/phone").status_code == 200
        assert c.get("/phone/static/phone-worklet.js").status_code == 200
        assert c.get("/calls").status_code == 200
        # A signed-in browser's /media is let through without Twilio's signature...
        assert ws_status(c, "/media", {"Origin": PUBLIC}) == 101
        # ...but not when another site makes the browser open it.
        assert ws_status(c, "/media", {"Origin": "https://evil.example.net"}) == 403
    assert len(Recorder.instances) == 1 and isinstance(Recorder.instances[0].events[-1], Stop)


def test_bearer_token_works_for_scripts():
    with client(PUBLIC, public_url=PUBLIC, webphone=True, webphone_token=WEB_TOKEN) as c:
        assert c.get("/calls", headers={"Authorization": f"Bearer {WEB_TOKEN}"}).status_code == 200
        assert c.get("/calls", headers={"Authorization": f"Bearer {WEB_TOKEN[:-1]}"}).status_code == 401


def test_off_on_a_non_loopback_host_unless_asked_for():
    with client("http://10.0.0.5:8080", host="0.0.0.0", twilio_auth_token=TWILIO_TOKEN) as c:
        assert c.get("/phone").status_code == 404
        # No viewer; the path itself exists for the outbound API's POST /calls.
        assert c.get("/calls").status_code in (404, 405)
        assert ws_status(c, "/media", {"Origin": "http://10.0.0.5:8080"}) == 403
    assert WebAccess.from_settings(Settings.from_env({}, host="0.0.0.0", webphone=True)).token_required


def test_short_tokens_are_refused_at_start_up():
    with pytest.raises(ConfigError, match="IVR_WEBPHONE_TOKEN"):
        Settings.from_env({"IVR_WEBPHONE_TOKEN": "short"})


# --- loopback, no token ------------------------------------------------------------------------


def test_loopback_serves_the_phone_to_local_browsers_only():
    local = {"Origin": "http://127.0.0.1:8080"}
    with client(twilio_auth_token=TWILIO_TOKEN) as c:
        page = c.get("/phone")
        assert page.status_code == 200 and 'id="call"' in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert c.get("/phone/static/phone.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/phone/static/../../config.py").status_code == 404
        assert ws_status(c, "/media", local) == 101
        # Not a browser: Twilio's signature is still required when TWILIO_AUTH_TOKEN is set.
        assert ws_status(c, "/media") == 403
        assert ws_status(c, "/media", {"Origin": "http://evil.example.net"}) == 403
        # Through a tunnel or proxy to 127.0.0.1, the request is not local.
        assert c.get("/phone", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
        assert ws_status(c, "/media", {**local, "X-Forwarded-For": "203.0.113.9"}) == 403
    with client("http://attacker.example.net", twilio_auth_token=TWILIO_TOKEN) as c:  # DNS rebinding
        assert c.get("/phone").status_code == 403
    assert len(Recorder.instances) == 1


def test_event_stream_ids_are_checked_and_taken_once():
    local = {"Origin": "http://127.0.0.1:8080", "host": "127.0.0.1:8080"}
    with client() as c:
        assert ws_status(c, "/phone/events?streamSid=nope", local) == 400
        with c.websocket_connect(f"/phone/events?streamSid={SID}", headers=local) as ws:
            assert orjson.loads(ws.receive_text()) == {"type": "hello"}
            assert ws_status(c, f"/phone/events?streamSid={SID}", local) == 409


# --- the side channel --------------------------------------------------------------------------


class FakeLine:
    def __init__(self, stream_sid: str, capture: CaptureWriter | None = None):
        self.start = Start(sequence=1, stream_sid=stream_sid, account_sid="AC", call_sid="CA1", tracks=("inbound",),
                           custom_parameters={}, media_format=None)
        self.capturing = capture is not None
        self.captured: list[dict] = []

    def capture_event(self, event):
        self.captured.append(event)


async def test_hub_delivers_a_calls_events_to_its_subscriber_only():
    hub = EventHub()
    sub = hub.subscribe(SID)
    assert hub.subscribe(SID) is None
    assert listener_for(hub, FakeLine("MZ" + "b" * 32)) is None  # nobody listens: the call pays nothing
    listen = listener_for(hub, FakeLine(SID))
    assert listener_for(hub, FakeLine(SID)) is None  # a second stream with that sid gets nothing
    listen({"type": "state", "state": "listening"})
    listen({"type": "caller", "text": "hello"})
    got = [await asyncio.wait_for(sub.queue.get(), 1) for _ in range(2)]
    assert [e["type"] for e in got] == ["state", "caller"] and all("t_ms" in e for e in got)
    hub.unsubscribe(sub)
    assert hub.subscribe(SID) is not None


def test_cut_event_says_what_was_heard_of_each_piece():
    turn = BotTurn(3)
    ledger = turn.ledger
    ledger.add(0, "Thanks for calling.")
    ledger.audio(0, 50)
    ledger.complete(0, "t3-p0")
    ledger.add(1, "You can ask about our hours or where we are.")
    ledger.audio(1, 100)
    ledger.add(2, "Or press 1.")
    ledger.heard(100)  # half of piece 1 played
    ledger.cut_short()
    ev = cut_event(turn, "barge-in")
    assert ev["type"] == "cut" and ev["turn"] == 3 and ev["reason"] == "barge-in"
    heard = [p["heard"] for p in ev["pieces"]]
    assert heard[0] == "Thanks for calling."
    assert heard[1] and "You can ask about our hours or where we are.".startswith(heard[1]) and heard[1] != ev["pieces"][1]["text"]
    assert heard[2] == ""
    assert [p["mark"] for p in ev["pieces"]] == ["t3-p0", "t3-p1", "t3-p2"]
    assert ev["heard"] == f"{heard[0]} {heard[1]}"


# --- the capture -------------------------------------------------------------------------------


def test_replay_still_reads_a_capture_with_outbound_messages_and_events(tmp_path):
    with CaptureWriter.open(tmp_path, "CA1") as w:
        w.write(0, tm.CONNECTED)
        w.write(1, tm.start())
        w.write_out(2, '{"event":"mark","streamSid":"MZ1","mark":{"name":"t1-p0"}}')
        w.write_event(2, {"type": "bot", "turn": 1, "piece": 0, "mark": "t1-p0", "text": "Hi."})
        w.write(20, tm.media(2, 1, 0))
        w.write(40, tm.stop(3))
        path = w.path
    kinds = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sum("out" in k for k in kinds) == 1 and sum("event" in k for k in kinds) == 1
    messages = list(read_capture(path))
    assert len(messages) == 4 and all(isinstance(m.text, str) and '"event"' in m.text for m in messages)
    plan = load_capture(path)
    assert plan.kind == "capture"


# --- ivr serve ---------------------------------------------------------------------------------


def test_startup_lines_name_the_address_and_never_the_token():
    lines = startup_lines(Settings.from_env({}, port=9000))
    assert lines[0].startswith("web phone: http://127.0.0.1:9000/phone")
    public = startup_lines(Settings.from_env({}, public_url=PUBLIC, webphone_token=WEB_TOKEN))
    assert public[0].startswith(f"web phone: {PUBLIC}/phone") and not any(WEB_TOKEN in line for line in public)
    assert any("REFUSED" in line for line in startup_lines(Settings.from_env({}, public_url=PUBLIC)))
    assert startup_lines(Settings.from_env({}, host="0.0.0.0")) == []


async def test_ivr_serve_prints_the_web_phone_address(tmp_path):
    from live_server import free_port

    port = free_port()
    env = {**os.environ, "IVR_PORT": str(port), "IVR_LOG_LEVEL": "warning"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ivr", "serve", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    seen = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, f"ivr serve exited first: {seen}"
                seen.append(line)
                if "web phone:" in line:
                    break
    finally:
        proc.terminate()
        await proc.wait()
    assert f"http://127.0.0.1:{port}/phone" in seen[-1]
