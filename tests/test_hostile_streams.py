"""A real `ivr serve` (embedded engines) facing hostile, dead and careless media streams.

One server for the module, with a short IVR_STREAM_IDLE_SECONDS and two lines, driven from
outside by raw WebSocket clients. The drain runs last: it ends the server.
"""

import asyncio
import base64
import json
import secrets
import signal

import httpx
import pytest
import pytest_asyncio
import websockets

from ops_server import ServeProcess, value

IDLE_S = 6.0  # evictions come at 2 s of silence: well before
MAX_CALLS = 2
SILENCE = b"\xff" * 160

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    proc = ServeProcess({"IVR_STREAM_IDLE_SECONDS": str(IDLE_S), "IVR_MAX_CALLS": str(MAX_CALLS)})
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


class Stream:
    """Twilio's side of one Media Stream, message by message, with numbers of our choosing."""

    def __init__(self, call_sid: str | None = None) -> None:
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.seq = 0

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def start(self) -> str:
        return json.dumps({
            "event": "start", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
            "start": {"accountSid": "AC" + "0" * 32, "streamSid": self.stream_sid, "callSid": self.call_sid,
                      "tracks": ["inbound"], "customParameters": {"From": "+15550100444", "To": "+15550100123"},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        })

    def media(self, chunk: int, timestamp: int, payload: bytes = SILENCE) -> str:
        return json.dumps({
            "event": "media", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp),
                      "payload": base64.b64encode(payload).decode()},
        })

    def dtmf(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
                           "mark": {"name": name}})

    def stop(self) -> str:
        return json.dumps({"event": "stop", "sequenceNumber": self._next(), "streamSid": self.stream_sid,
                           "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})


async def closed_by_server(ws, timeout: float) -> None:
    """Read what the server sends (as Twilio would) until it closes the socket."""
    async with asyncio.timeout(timeout):
        async for _ in ws:
            pass


def ended(call_sid: str):
    return lambda r: r.get("call_sid") == call_sid and r.get("msg", "").startswith("call ended")


def of_call(server: ServeProcess, call_sid: str) -> list[dict]:
    return [r for r in server.lines if r.get("call_sid") == call_sid]


async def test_a_timestamp_an_hour_ahead_is_counted_not_filled(server):
    before = await server.metrics()
    s = Stream()
    async with websockets.connect(server.media_url) as ws:
        await ws.send(s.start())
        await ws.send(s.media(1, 0))
        # A lost chunk, and a clock an hour ahead: filling it would be 28.8 MB of silence
        # pushed through the recogniser, frame by frame, on the event loop.
        await ws.send(s.media(3, 3_600_000))
        await ws.send(s.media(4, 3_600_020))
        async with httpx.AsyncClient(base_url=server.base, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200  # the loop is not stuck
        await ws.send(s.stop())
        line = await server.wait_for(ended(s.call_sid), 30)
    assert "1 jumps not filled" in line["msg"], line
    assert any("jumps 3599980 ms" in r["msg"] for r in of_call(server, s.call_sid))
    after = await server.metrics()
    assert value(after, "ivr_media_anomalies_total", kind="long_gap") == value(before, "ivr_media_anomalies_total", kind="long_gap") + 1
    assert value(after, "ivr_media_anomalies_total", kind="lost") == value(before, "ivr_media_anomalies_total", kind="lost")


async def test_sockets_that_never_start_are_closed(server):
    before = await server.metrics()
    sockets = [await websockets.connect(server.media_url) for _ in range(5)]
    for ws in sockets:
        await ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send('{"event":"bogus"}')  # a message that is not `start` keeps nothing alive
    for ws in sockets:
        await closed_by_server(ws, IDLE_S + 15)
        assert ws.close_code == 1000 and "start" in ws.close_reason
    after = await server.metrics()
    assert value(after, "ivr_streams_timed_out_total", reason="no_start") - value(before, "ivr_streams_timed_out_total", reason="no_start") == 5


async def test_a_started_stream_that_goes_silent_is_ended_and_its_line_freed(server):
    before = await server.metrics()
    s = Stream()
    async with websockets.connect(server.media_url) as ws:
        await ws.send(s.start())
        await ws.send(s.media(1, 0))
        await server.wait_for(lambda r: r.get("call_sid") == s.call_sid and r["msg"].startswith("call started"), 30)
        # Then nothing: the bot greets, nobody is there.
        await closed_by_server(ws, IDLE_S + 15)
        assert ws.close_code == 1000 and "audio" in ws.close_reason
    line = await server.wait_for(ended(s.call_sid), 10)
    assert line["msg"].startswith("call ended (no_media)"), line
    after = await server.metrics()
    assert value(after, "ivr_call_endings_total", how="no_media") == value(before, "ivr_call_endings_total", how="no_media") + 1
    assert value(after, "ivr_active_calls") == value(before, "ivr_active_calls")


async def test_silent_streams_do_not_make_a_real_caller_hear_busy(server):
    silent = [Stream(), Stream()]  # as many as there are lines
    sockets = []
    for s in silent:
        ws = await websockets.connect(server.media_url)
        await ws.send(s.start())
        await server.wait_for(lambda r, s=s: r.get("call_sid") == s.call_sid and r["msg"].startswith("call started"), 30)
        sockets.append(ws)
    caller = Stream(call_sid="CA" + secrets.token_hex(16))
    form = {"CallSid": caller.call_sid, "From": "+15550100777", "To": "+15550100123"}
    async with httpx.AsyncClient(base_url=server.base) as http:
        # Busy while the silent streams might still be calls; a line within seconds.
        for _ in range(100):
            # A number in the query string (a misconfigured webhook URL) must not reach the log.
            answer = await http.post("/twiml/voice?From=%2B15550100777", data=form)
            assert answer.status_code == 200
            if "<Connect>" in answer.text:
                break
            await asyncio.sleep(0.1)  # polling the server's answer, which changes with time
        assert "<Connect>" in answer.text, (answer.text, server.raw[-20:])
    # One silent stream gave its line up (its task logs that as it ends, just after).
    sids = {s.call_sid for s in silent}
    await server.wait_for(lambda r: r.get("call_sid") in sids and "every line is taken" in r.get("msg", ""), 10)
    evicted = [r for r in server.lines if r.get("call_sid") in sids and "every line is taken" in r.get("msg", "")]
    assert len(evicted) == 1, evicted
    # The caller's stream takes the line its webhook reserved, and the call goes on.
    async with websockets.connect(server.media_url) as ws:
        await ws.send(caller.start())
        await ws.send(caller.media(1, 0))
        await server.wait_for(lambda r: r.get("call_sid") == caller.call_sid and r["msg"].startswith("call started"), 30)
        await ws.send(caller.stop())
        await server.wait_for(ended(caller.call_sid), 30)
    for ws in sockets:
        await closed_by_server(ws, IDLE_S + 15)
    assert not [raw for raw in server.raw if "5550100777" in raw]
    assert any("/twiml/voice?From=%2B1" in raw for raw in server.raw), server.raw[-30:]  # the access log line, masked


async def test_an_echo_of_a_mark_never_sent_is_counted(server):
    before = await server.metrics()
    s = Stream()
    async with websockets.connect(server.media_url) as ws:
        await ws.send(s.start())
        await ws.send(s.media(1, 0))
        await ws.send(s.mark("never-sent"))
        await ws.send(s.stop())
        await server.wait_for(ended(s.call_sid), 30)
    after = await server.metrics()
    assert value(after, "ivr_protocol_errors_total", kind="unknown_mark") == value(before, "ivr_protocol_errors_total", kind="unknown_mark") + 1
    assert any("never-sent" in r["msg"] and r["level"] == "warning" for r in of_call(server, s.call_sid))


async def test_a_caller_hanging_up_while_the_bot_speaks_is_a_normal_end(server):
    s = Stream()
    ws = await websockets.connect(server.media_url)
    await ws.send(s.start())
    for chunk in range(1, 10):
        await ws.send(s.media(chunk, (chunk - 1) * 20))
    while json.loads(await asyncio.wait_for(ws.recv(), 30))["event"] != "media":
        pass  # the greeting is playing
    # A key (which stops the bot: a `clear`) and the hang-up, arriving together: the server
    # handles the key after the socket is already closing.
    ws.protocol.send_text(s.dtmf("7").encode())
    ws.protocol.send_close(1000)
    ws.transport.write(b"".join(ws.protocol.data_to_send()))
    await server.wait_for(ended(s.call_sid), 30)
    ws.transport.abort()
    mine = of_call(server, s.call_sid)
    assert not [r for r in mine if r["level"] == "error"], mine
    assert any(r["msg"] == "the caller hung up while the bot was speaking" for r in mine), [r["msg"] for r in mine]
    assert not [r for r in mine if "pressed 7" in r["msg"]]  # keys are private


async def test_draining_refuses_new_streams_as_draining_and_exits_by_its_signal(server):
    live = Stream()
    ws = await websockets.connect(server.media_url)
    await ws.send(live.start())

    async def talk():  # a live call: audio every 20 ms, as Twilio sends it
        chunk = 1
        while True:
            await ws.send(live.media(chunk, (chunk - 1) * 20))
            chunk += 1
            await asyncio.sleep(0.02)

    talking = asyncio.create_task(talk())
    try:
        await server.wait_for(lambda r: r.get("call_sid") == live.call_sid and r["msg"].startswith("call started"), 30)
        server.signal(signal.SIGTERM)
        await server.wait_for(lambda r: r.get("msg", "").startswith("draining"), 10)
        late = Stream()
        async with websockets.connect(server.media_url) as late_ws:
            await late_ws.send(late.start())
            await closed_by_server(late_ws, 10)
        line = await server.wait_for(lambda r: r.get("call_sid") == late.call_sid and r["msg"].startswith("refused"), 10)
        assert "draining" in line["msg"] and "no free line" not in line["msg"], line
    finally:
        talking.cancel()
    await ws.send(live.stop())
    await ws.close()
    # As ivr.drain says: the drained server ends by the signal it was sent (143 in a shell).
    assert await server.wait_exit(60) == -signal.SIGTERM
