"""Graceful drain of a real `ivr serve` (embedded engines) on SIGTERM with calls in flight.

Call A hangs up by itself during the drain: it must not be cut. Call B would go on far past the
drain deadline: the bot must end it politely at the deadline (a goodbye the caller hears, then a
clean close), not before. Meanwhile /readyz is 503, /healthz 200, new calls get busy TwiML and
an unannounced stream is refused. Timing bounds are the drain's own deadlines, not speed.
"""

import asyncio
import signal
import textwrap
import time

import httpx
import pytest

from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.report import build_report
from ivr.harness.sources import load_call
from ops_server import ServeProcess

DRAIN_S = 10.0
CALLER = "+15550100123"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def plan(tmp_path, name: str, hangup_at: float):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        params: {{From: "{CALLER}", To: "+15550100999"}}
        steps:
          - hangup:
            after: at {hangup_at}
        """))
    return await load_call(path)


def started(call_sid):
    return lambda r: r.get("call_sid") == call_sid and r.get("msg", "").startswith("call started")


async def test_sigterm_drains_calls_then_exits(tmp_path):
    server = ServeProcess({"IVR_DRAIN_SECONDS": str(DRAIN_S)})
    await server.start()
    try:
        await _drain_scenario(server, tmp_path)
    finally:
        await server.stop()


async def _drain_scenario(server: ServeProcess, tmp_path):
    short = TwilioEmulator(await plan(tmp_path, "short", 6.0), ReplayOptions(url=server.media_url, max_call_s=60))
    long = TwilioEmulator(await plan(tmp_path, "long", 80.0), ReplayOptions(url=server.media_url, max_call_s=90))
    a = asyncio.create_task(short.run())
    b = asyncio.create_task(long.run())
    for em in (short, long):
        await server.wait_for(started(em.options.call_sid), 30)

    assert not a.done() and not b.done()  # both calls are in flight when the signal comes
    t_term = time.monotonic()
    long_term_ms = long.clock.now_ms()
    server.signal(signal.SIGTERM)
    await server.wait_for(lambda r: r.get("msg", "").startswith("draining"), 10)

    async with httpx.AsyncClient(base_url=server.base) as http:
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200
        voice = await http.post("/twiml/voice", data={"CallSid": "CA" + "9" * 32, "From": CALLER, "To": "+15550100999"})
        assert voice.status_code == 200
        assert "<Say>" in voice.text and "<Hangup" in voice.text and "<Connect>" not in voice.text
        assert "ivr_draining 1.0" in (await http.get("/metrics")).text

    # A stream nobody announced through the webhook is refused at once, without a word.
    late = TwilioEmulator(await plan(tmp_path, "late", 30.0), ReplayOptions(url=server.media_url, max_call_s=30))
    late_record = await late.run()
    assert late_record.ended_by == "bot" and not late_record.errors
    assert not late_record.playback.media and late_record.end_ms < 5000

    # A: ended by its caller, during the drain, with nothing cut.
    rec_a = await a
    t_a = time.monotonic()
    assert rec_a.ended_by == "caller" and not rec_a.errors, rec_a.errors
    assert t_term < t_a < t_term + DRAIN_S

    # B: still there at the deadline, then ended by the bot after a goodbye it heard.
    rec_b = await b
    t_b = time.monotonic()
    assert rec_b.ended_by == "bot" and not rec_b.errors, rec_b.errors  # a 1012 close would be an error
    assert t_b >= t_term + DRAIN_S
    report = build_report(rec_b)
    deadline_ms = long_term_ms + DRAIN_S * 1000
    goodbye_marks = [m for m in report["marks"] if m["sent_ms"] >= deadline_ms]
    assert goodbye_marks and all(m["outcome"] == "played" for m in goodbye_marks), report["marks"]
    assert report["clears"], "the greeting still playing at the deadline was cleared before the goodbye"
    assert rec_b.end_ms >= max(m["echoed_ms"] for m in goodbye_marks)

    code = await server.wait_exit(30)
    assert code == -signal.SIGTERM, code  # uvicorn re-raises the signal it handled (ivr.drain)
    msgs = [r.get("msg", "") for r in server.lines]
    assert any(m.startswith("drain deadline: ending 1 call(s) politely") for m in msgs), msgs
    assert not any("still open after the goodbye" in m for m in msgs)

    # Logs: JSON throughout; every line of a call carries both ids; the caller's number masked.
    assert not [r for r in server.lines if r.get("not_json")]
    for em in (short, long):
        sid, stream = em.options.call_sid, em.options.stream_sid
        mine = [r for r in server.lines if r.get("call_sid") == sid]
        assert all(r["stream_sid"] == stream for r in mine)
        assert {"call started", "call ended"} <= {r["msg"][:12].rstrip(" :(") for r in mine}, mine
        # No line speaks of the call without carrying its ids as fields.
        assert all(r.get("call_sid") == sid for r in server.lines if sid in r.get("msg", ""))
    assert any(r["msg"] == "the bot ends the call" for r in server.lines if r.get("call_sid") == long.options.call_sid)
    assert not any(CALLER in raw for raw in server.raw)


# --- the drain's logic, without a server ------------------------------------------------------

@pytest.fixture(autouse=True)
def _not_draining_afterwards():
    """In-process drains set the process-wide ivr_draining gauge: leave it as found."""
    yield
    from ivr import metrics

    metrics.DRAINING.set(0)


class FakeHandler:
    def __init__(self, ended: asyncio.Event, polite: bool = True) -> None:
        self.ended = ended
        self.drained: list[tuple[str, str]] = []
        if not polite:
            self.drain = None  # type: ignore[assignment]
            self.line = self

    async def drain(self, goodbye: str, transfer_to: str = "") -> None:
        self.drained.append((goodbye, transfer_to))
        self.ended.set()  # the goodbye is heard, the call ends

    async def hang_up(self) -> None:  # as Line.hang_up, for handlers without drain()
        self.drained.append(("hang_up", ""))
        self.ended.set()


class FakeState:
    def __init__(self) -> None:
        from ivr.admission import Admission

        self.admission = Admission(10)
        self.calls: set[asyncio.Task] = set()
        self.handlers: dict[str, object] = {}

    def add_call(self, key: str, polite: bool = True) -> tuple[FakeHandler, asyncio.Event]:
        ended = asyncio.Event()
        handler = FakeHandler(ended, polite)
        task = asyncio.create_task(ended.wait())
        task.add_done_callback(lambda t: (self.calls.discard(t), self.handlers.pop(key, None)))
        self.calls.add(task)
        self.handlers[key] = handler
        return handler, ended


async def test_drain_lets_calls_that_end_in_time_end_by_themselves():
    from ivr.drain import Drain

    state = FakeState()
    handler, ended = state.add_call("a")
    drain = Drain(state, seconds=60, goodbye="bye")
    running = asyncio.create_task(drain.run())
    await asyncio.sleep(0)  # let the drain start waiting
    assert state.admission.draining and not await state.admission.reserve("CAnew")
    ended.set()  # the caller hangs up
    await asyncio.wait_for(running, 5)
    assert handler.drained == []


async def test_drain_ends_the_rest_politely_at_the_deadline_or_when_hurried():
    from ivr.drain import Drain

    state = FakeState()
    polite, _ = state.add_call("a")
    plain, _ = state.add_call("b", polite=False)
    drain = Drain(state, seconds=3600, goodbye="bye now", transfer_to="sip:desk@pbx.example.com")
    running = asyncio.create_task(drain.run())
    await asyncio.sleep(0)
    assert not running.done()
    drain.hurry()  # a second SIGTERM: do not wait the hour
    await asyncio.wait_for(running, 5)
    assert polite.drained == [("bye now", "sip:desk@pbx.example.com")]
    assert plain.drained == [("hang_up", "")]
    assert not state.calls


async def test_drain_with_no_calls_returns_at_once():
    from ivr.drain import Drain

    state = FakeState()
    await asyncio.wait_for(Drain(state, seconds=3600, goodbye="bye").run(), 5)
    assert state.admission.draining
