"""The runner of `ivr test`: starts the bot (or uses a running one), replays each case as Twilio
would, learns what the caller heard, and checks it (`ivr.harness.cases`).

What the caller heard comes from the bot's own heard-text ledger: before each call the runner
subscribes to the server's event side channel (`/phone/events?streamSid=…`, see ivr/web/README.md)
with the streamSid it will send, and gets every piece the bot spoke (with its mark), what was
heard of each cut turn, and the tools it ran. A piece whose mark the harness played back (as
Twilio would echo it) was heard whole. A carrier without marks (AudioSocket) plays what it is
given as it is given, so there the bot's own reckoning stands: what it did not cut was heard,
unless the call ended first (`ivr.harness.cases.played_whole`). AudioSocket's call is a TCP
port, not a route of the server's HTTP side: its side channel is at `RunOptions.http_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import orjson
import yaml

from ivr.harness.cases import (
    Case,
    Failure,
    Outcome,
    Skip,
    baseline,
    build_outcome,
    event_clock,
    check,
    pending_meanings,
)
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import CallPlan, Dtmf, Hangup, Say
from ivr.harness.record import CallRecord
from ivr.harness.report import build_report
from ivr.harness.sources import load_call
from ivr.harness.tts import Synthesiser

#: How long after the call ends to wait for the engine's last events (its `ended`).
EVENTS_GRACE_S = 3.0
#: Settings a test server must not inherit: the replayed calls do not exist at any carrier (a
#: transfer through its call control would go there for nothing), nothing signs the harness's
#: streams, and nothing reaches a public URL.
SERVER_ENV_DROPPED = (
    "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_API_KEY", "TWILIO_API_SECRET", "IVR_PUBLIC_URL", "IVR_HOST", "IVR_PORT",
    "TELNYX_API_KEY", "TELNYX_PUBLIC_KEY", "IVR_TELNYX_STREAM_TOKEN", "PLIVO_AUTH_ID", "PLIVO_AUTH_TOKEN",
    "VONAGE_APPLICATION_ID", "VONAGE_PRIVATE_KEY", "VONAGE_PRIVATE_KEY_PATH", "VONAGE_SIGNATURE_SECRET",
    "IVR_EXOTEL_BASIC_AUTH", "IVR_ASTERISK_BASIC_AUTH", "IVR_ASTERISK_ARI_URL", "IVR_ASTERISK_ARI_AUTH",
    # A running bot's AudioSocket port: the test bot gets a free one of its own, or none.
    "IVR_AUDIOSOCKET_PORT",
)


@dataclass
class CaseResult:
    case: Case
    failures: list[Failure] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    #: A case that could not run at all (bad script, no server): a failure of its own kind.
    error: str | None = None
    outcome: Outcome | None = None
    report: dict | None = None
    record: CallRecord | None = None
    #: The bot's engine events, from its side channel.
    events: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    updated: bool = False

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failures


# --- the bot under test -------------------------------------------------------------------------


class BotServer:
    """`ivr serve` on a free loopback port, with this environment (and `--flow` as IVR_FLOW)."""

    def __init__(self, flow: str | None, logs: Path, extra_env: dict[str, str] | None = None,
                 carrier: str = "twilio") -> None:
        from ivr.bench.procs import Procs, free_port
        from ivr.harness.carriers import PATHS

        self.port = free_port()
        self.procs = Procs(logs)
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROPPED}
        env.update({"IVR_HOST": "127.0.0.1", "IVR_PORT": str(self.port)})
        env.setdefault("IVR_LOG_LEVEL", "warning")
        if flow:
            env["IVR_FLOW"] = str(Path(flow).resolve())
        #: The bot's HTTP side, where its event side channel is.
        self.http_url = f"http://127.0.0.1:{self.port}"
        #: Where the harness calls the bot as `carrier`: its media route, or AudioSocket's TCP port.
        if carrier == "audiosocket":
            tcp_port = free_port()
            env["IVR_AUDIOSOCKET_PORT"] = str(tcp_port)
            self.url = f"tcp://127.0.0.1:{tcp_port}"
        else:
            self.url = f"ws://127.0.0.1:{self.port}" + PATHS[carrier]
        env.update(extra_env or {})
        self.env = env

    def start(self, timeout_s: float = 180.0) -> None:
        from ivr.bench.procs import _wait_http

        proc = self.procs.start("server", [sys.executable, "-m", "ivr", "serve"], env=self.env, stdout=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{self.port}/readyz", proc, "ivr serve", timeout=timeout_s)

    def log_tail(self) -> str:
        return self.procs.log_tail("server")

    def stop(self) -> None:
        self.procs.stop_all()


def events_url(base_url: str, stream_sid: str) -> str:
    """The side channel of the stream `stream_sid` on the server at `base_url`: its media route
    (ws://…) or its HTTP address (http://…); only the scheme and the host are kept."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/phone/events", f"streamSid={stream_sid}", ""))


class EventChannel:
    """One call's engine events from the server's side channel."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self.events: list[dict] = []
        self.ended = asyncio.Event()
        self.problem: str | None = None
        self._ws = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "EventChannel":
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._ws = await connect(self.url, additional_headers=headers, open_timeout=10, ping_interval=None)
            hello = orjson.loads(await asyncio.wait_for(self._ws.recv(), 10))
            if hello.get("type") != "hello":
                raise ValueError(f"unexpected first message {hello!r}")
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.problem = (f"the server's event side channel answered HTTP {status}: "
                            + ("set IVR_WEBPHONE_TOKEN to the server's web phone token" if status in (401, 403)
                               else "the web phone is off there (IVR_WEBPHONE=1 turns it on)" if status == 404 else "refused"))
        except (OSError, TimeoutError, InvalidHandshake, ValueError, orjson.JSONDecodeError) as exc:
            self.problem = f"the server's event side channel failed: {type(exc).__name__}: {exc}"
        if self._ws is not None and self.problem is None:
            self._task = asyncio.create_task(self._read())
        else:
            self.ended.set()
        return self

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self._ws:
                event = orjson.loads(message)
                if isinstance(event, dict):
                    self.events.append(event)
                    if event.get("type") == "ended":
                        break
        except (ConnectionClosed, orjson.JSONDecodeError):
            pass
        finally:
            self.ended.set()

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EVENTS_GRACE_S):
                await self.ended.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()


# --- one case -----------------------------------------------------------------------------------


@dataclass
class RunOptions:
    url: str
    speed: float = 1.0
    #: Multiplies every latency budget (a busy CI machine); the call clock's speed adds its own.
    margin: float = 1.0
    max_call_s: float = 300.0
    #: The server's web phone token for its event side channel (IVR_WEBPHONE_TOKEN), if it has one.
    token: str | None = None
    auth_token: str | None = None
    synthesise: Synthesiser | None = None
    judge: Callable | None = None
    #: Whose side of the call the harness plays (ivr.harness.carriers); `url` is that carrier's route.
    carrier: str = "twilio"
    #: The server's HTTP address when `url` does not give it (AudioSocket's is a TCP port).
    http_url: str | None = None

    @property
    def budget_scale(self) -> float:
        # Server time stretches into call time on a faster clock: a budget grows with it.
        return self.margin * max(1.0, self.speed)


#: When a case expects the bot to end the call, the caller waits this long in silence for it.
ENDING_SILENCE_S = 3.0


def patient_caller(plan: CallPlan, case: Case, margin: float) -> None:
    """On a slow machine the bot pauses longer between the pieces of a reply (each is synthesised
    in turn): the caller waits `margin` times longer for the bot's silence before going on, so a
    slow bot is not interrupted where a fast one would not be. And when the case expects the bot
    to end the call (a transfer or hang-up), the caller gives it time to."""
    for step in plan.steps:
        after = step.after
        if after.kind == "bot_silent" and margin > 1:
            step.after = replace(after, seconds=after.seconds * margin, timeout=after.timeout * margin)
    last = plan.steps[-1]
    if isinstance(last, Hangup) and last.after.kind == "bot_silent" and (case.expect.transfer or case.expect.hangup):
        last.after = replace(last.after, seconds=max(last.after.seconds, ENDING_SILENCE_S * margin),
                             timeout=max(last.after.timeout, 30.0))


def caller_spans(plan: CallPlan, record: CallRecord) -> tuple[list[tuple[float, float]], list[str | None]]:
    """The caller's span (start, end ms) of each say/audio/dtmf step that ran, in order, and its words."""
    spans, texts = [], []
    utterances = iter(record.utterances)
    keys = iter(record.dtmf)
    for step in plan.steps:
        if isinstance(step, Say):
            utterance = next(utterances, None)
            found = utterance.speech_spans_ms() if utterance is not None else []
            if not found:
                break
            spans.append((found[0][0], found[-1][1]))
            texts.append(step.text)
        elif isinstance(step, Dtmf):
            times = [next(keys, (None, None))[1] for _ in step.digits]
            if not times or times[-1] is None:
                break
            spans.append((times[0], times[-1]))
            texts.append(None)
    return spans, texts


def turn_spans(report: dict, events: list[dict], speed: float) -> tuple[list[tuple[float, float]], list[str | None]]:
    """For recorded calls: the report's caller turns, each with what the bot's speech-to-text heard
    in it (the engine's `caller` event following its end), or its keys."""
    scale, offset = event_clock(report, events, speed)
    turns = report["turns"]
    spans = [(t["caller_speech_start_ms"], t["caller_speech_end_ms"]) for t in turns]
    texts: list[str | None] = [f"(keys {t['caller_keys']})" if t["caller_keys"] else None for t in turns]
    for ev in events:
        if ev.get("type") != "caller" or not ev.get("text"):
            continue
        at = float(ev.get("t_ms", 0.0)) * scale + offset
        ended = [i for i, (_a, b) in enumerate(spans) if b <= at and texts[i] is None]
        if ended:
            texts[ended[-1]] = str(ev["text"])
    return spans, texts


def annotate_report(report: dict, outcome: Outcome) -> None:
    """Fill the report's `bot_text` (for its summary and timeline) with what the caller heard: a
    reply goes on the last report turn inside its step (report times are rounded to 0.1 ms)."""
    report["greeting"]["bot_text"] = outcome.greeting.heard or None
    bounds = [r.caller_start_ms - 1 for r in outcome.replies] + [math.inf]
    for i, reply in enumerate(outcome.replies):
        inside = [t for t in report["turns"] if bounds[i] <= t["caller_speech_start_ms"] < bounds[i + 1]]
        if inside:
            inside[-1]["bot_text"] = reply.heard or None


async def run_case(case: Case, opts: RunOptions) -> CaseResult:
    from ivr.harness.sources import CallSourceError
    from ivr.harness.tts import NoSynthesiser

    result = CaseResult(case)
    t0 = time.monotonic()
    try:
        plan = await load_call(case.call, synthesise=opts.synthesise)
    except (CallSourceError, NoSynthesiser) as exc:
        result.error = str(exc)
        return result
    patient_caller(plan, case, opts.margin)
    options = ReplayOptions(url=opts.url, speed=opts.speed, auth_token=opts.auth_token, max_call_s=opts.max_call_s,
                            carrier=opts.carrier)
    emulator = TwilioEmulator(plan, options)
    # The carrier's side names the stream (Twilio's streamSid, or another carrier's id): the bot
    # binds its events to that name.
    async with EventChannel(events_url(opts.http_url or opts.url, emulator.side.stream_id), opts.token) as channel:
        record = await emulator.run()
    report = build_report(record)
    events = channel.events
    if case.kind == "script":
        spans, texts = caller_spans(plan, record)
    else:
        spans, texts = turn_spans(report, events, opts.speed)
    outcome = build_outcome(report, spans, events, opts.speed, words_known=channel.problem is None, caller_texts=texts,
                            has_marks=emulator.side.has_marks, has_clear=emulator.side.has_clear)
    annotate_report(report, outcome)
    judgements = {}
    for key in pending_meanings(case, outcome):
        judgements[key] = None
        if opts.judge is not None:
            try:
                judgements[key] = await opts.judge(key[1], key[2])
            except Exception as exc:  # a judge that fails is the run's problem, said plainly
                result.error = str(exc)
    result.failures, result.skips = check(case, outcome, judgements, opts.budget_scale)
    if channel.problem and (case.uses_meaning or any(s.what == "says" for s in result.skips)):
        problem = channel.problem
        if opts.http_url:  # a guess when the media URL could not say where the HTTP side is
            problem += f" (asked {opts.http_url}; is that the bot's HTTP address?)"
        result.failures.append(Failure("call", "side channel", "the bot's words", problem))
    result.outcome, result.report, result.record, result.events = outcome, report, record, events
    result.wall_s = time.monotonic() - t0
    return result


async def run_cases(cases: list[Case], opts: RunOptions, jobs: int,
                    on_start: Callable[[Case], None] | None = None,
                    on_done: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(case: Case) -> CaseResult:
        async with gate:
            if on_start:
                on_start(case)
            try:
                result = await run_case(case, opts)
            except Exception as exc:  # one broken case must not stop the suite
                result = CaseResult(case, error=f"{type(exc).__name__}: {exc}")
            if on_done:
                on_done(result)
            return result

    return list(await asyncio.gather(*(one(c) for c in cases)))


# --- recorded cases -----------------------------------------------------------------------------


def write_case(path: Path, doc: dict, header: str) -> None:
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body, encoding="utf-8")


RECORDED_HEADER = (
    "Recorded by `ivr test --record`: the caller's side is the capture named in `call:`, and `expect:`\n"
    "is what the bot did then (what the caller heard each turn, its actions, latency budgets with a\n"
    "margin). `ivr test --update` rewrites `expect:` with what the bot does now."
)


def update_case(result: CaseResult, first: bool = False) -> None:
    """Today's outcome becomes the recorded case's baseline (`first`: as it is recorded)."""
    assert result.outcome is not None
    doc = dict(result.case.doc)
    doc["expect"] = baseline(result.outcome)
    if not first:
        doc["recorded"] = {**(doc.get("recorded") or {}), "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_case(result.case.path, doc, RECORDED_HEADER)
    result.updated = True


def new_recorded_case(capture: Path, into: Path) -> Path:
    """Copy the capture into `into` and write a case for it (its baseline still empty)."""
    import shutil

    into.mkdir(parents=True, exist_ok=True)
    target = into / capture.name
    if capture.resolve() != target.resolve():
        shutil.copyfile(capture, target)
    path = into / (capture.stem + ".yaml")
    doc = {"name": capture.stem, "call": target.name,
           "recorded": {"from": capture.name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    write_case(path, doc, RECORDED_HEADER)
    return path
