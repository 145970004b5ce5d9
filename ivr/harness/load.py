"""The load generator: N concurrent replayed calls against one server for a fixed time.

Call slots start evenly over the ramp; each slot replays its calls back to back (the CALL files
in turn) until the duration is over. The duration is a hard limit: calls still running then
are hung up ("cut"), and the turns they completed still count. Each call is reduced to its
figures as soon as it ends, so memory stays flat however long the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ivr.harness.clock import FramePacer
from ivr.harness.emulator import MarkEchoes, ReplayOptions, TwilioEmulator
from ivr.harness.plan import CallPlan
from ivr.harness.readbatch import ReadBatch
from ivr.harness.record import CallRecord
from ivr.harness.report import all_turns, barge_in_clear, bot_pacing, bot_voiced_ms, error_entry, percentiles, turn_timings

FORMAT = "ivr.load.summary/1"
#: Error kinds that mean the call itself failed (not merely a slow or silent bot).
FAILURE_KINDS = {"connect_failed", "connection_closed", "harness_error"}
MAX_LISTED_FAILURES = 20


@dataclass
class LoadOptions:
    url: str
    calls: int
    ramp_s: float
    duration_s: float
    speed: float = 1.0
    params: Mapping[str, str] = field(default_factory=dict)
    auth_token: str | None = None
    sign_url: str | None = None
    marks: MarkEchoes = field(default_factory=MarkEchoes)


@dataclass
class LoadFigures:
    """Running totals, readable while the load runs (the progress display shows them).

    Times are kept unrounded; they are rounded once, in the percentiles of the summary."""

    started: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0
    cut: int = 0
    response_ms: list[float] = field(default_factory=list)
    barge_in_ms: list[float] = field(default_factory=list)
    barge_ins_without_clear: int = 0
    frames_after_clear: int = 0
    frame_lag_ms: list[float] = field(default_factory=list)
    jitter_ms: list[float] = field(default_factory=list)
    lead_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    unanswered_turns: int = 0
    timeouts: int = 0
    failures: list[dict] = field(default_factory=list)

    def add(self, record: CallRecord) -> None:
        """Count a finished call: the figures the report has for it (the same functions give
        them), without the rest of the report, which a load run would build for every call."""
        errors = record.errors
        failure = next((e for e in errors if e.kind in FAILURE_KINDS), None)
        self.completed += 1
        if record.failed or failure is not None:
            self.failed += 1
            if len(self.failures) < MAX_LISTED_FAILURES:
                first = failure or (errors[0] if errors else None)
                self.failures.append({"call": record.name, "call_sid": record.call_sid,
                                      "error": None if first is None else error_entry(first)})
        if any(e.kind == "max_duration" for e in errors):
            self.cut += 1
        self.timeouts += sum(e.kind == "timeout" for e in errors)
        voiced = bot_voiced_ms(record)
        for turn in turn_timings(record, voiced, all_turns(record, voiced)[1]):
            latency = turn.response_latency_ms
            if latency is None:
                self.unanswered_turns += 1
            else:
                self.response_ms.append(latency)
            if turn.barge_in:
                clear = barge_in_clear(record, turn)
                if clear.latency_ms is None:
                    self.barge_ins_without_clear += 1
                else:
                    self.barge_in_ms.append(clear.latency_ms)
                self.frames_after_clear += clear.frames_after_clear
        self.frame_lag_ms.extend(record.frame_lag_ms)
        if record.playback.media:
            pacing = bot_pacing(record.playback)
            self.jitter_ms.append(pacing.jitter_ms)
            self.lead_ms.extend(pacing.lead_ms)
            self.underruns += pacing.underruns


async def run_load(
    plans: list[CallPlan],
    options: LoadOptions,
    figures: LoadFigures | None = None,
    on_change: Callable[[LoadFigures], None] | None = None,
) -> LoadFigures:
    figures = figures or LoadFigures()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + options.duration_s
    notify = on_change or (lambda f: None)
    # One timer for every call's caller frames, and the bot's messages read when it wakes.
    pacer = FramePacer(ReadBatch() if ReadBatch.supported() else None)

    async def slot(index: int) -> None:
        start_at = t0 + (options.ramp_s * index / options.calls if options.calls > 1 else 0.0)
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        n = 0
        while loop.time() < deadline:
            plan = plans[(index + n) % len(plans)]
            n += 1
            remaining_call_s = (deadline - loop.time()) * options.speed
            replay = ReplayOptions(
                url=options.url, speed=options.speed, params=options.params,
                auth_token=options.auth_token, sign_url=options.sign_url, max_call_s=remaining_call_s,
                marks=options.marks, keep_caller_audio=False,
            )
            figures.started += 1
            figures.active += 1
            notify(figures)
            try:
                record = await TwilioEmulator(plan, replay, pacer).run()
            finally:
                figures.active -= 1
            figures.add(record)
            notify(figures)
            if not record.connected:
                # A refused connection returns at once: do not spin; try again a little later.
                await asyncio.sleep(min(1.0, max(0.0, deadline - loop.time())))

    async with asyncio.TaskGroup() as tg:
        for i in range(options.calls):
            tg.create_task(slot(i))
    return figures


def load_summary(figures: LoadFigures, options: LoadOptions, wall_seconds: float, server: dict | None) -> dict:
    return {
        "format": FORMAT,
        "url": options.url,
        "calls": options.calls,
        "ramp_s": options.ramp_s,
        "duration_s": options.duration_s,
        "speed": options.speed,
        "wall_seconds": round(wall_seconds, 2),
        "calls_started": figures.started,
        "calls_completed": figures.completed,
        "calls_failed": figures.failed,
        "calls_cut_at_deadline": figures.cut,
        "response_latency_ms": percentiles(figures.response_ms),
        "unanswered_turns": figures.unanswered_turns,
        "barge_in_latency_ms": percentiles(figures.barge_in_ms),
        "barge_ins_without_clear": figures.barge_ins_without_clear,
        "frames_after_clear": figures.frames_after_clear,
        "inbound_frame_lag_ms": percentiles(figures.frame_lag_ms),
        "outbound_jitter_ms": percentiles(figures.jitter_ms),
        "outbound_lead_ms": percentiles(figures.lead_ms),
        "outbound_underruns": figures.underruns,
        "bot_wait_timeouts": figures.timeouts,
        "failures": figures.failures,
        "server": server,
    }


async def run_load_with_monitor(
    plans: list[CallPlan],
    options: LoadOptions,
    server_pid: int | None = None,
    on_change: Callable[[LoadFigures], None] | None = None,
) -> dict:
    """Run the load, sampling the server's CPU and memory when it is a local process, and
    reading its own event-loop lag from its /metrics when it serves one."""
    from ivr.harness.servermon import ServerMonitor, find_listening_pid, histogram_change, metrics_url, read_histogram

    pid = server_pid or find_listening_pid(options.url)
    monitor = None
    if pid:
        try:
            monitor = ServerMonitor(pid)
            monitor.start()
        except Exception:  # psutil missing or the process gone: run without server figures
            monitor = None
    lag_url = metrics_url(options.url)
    lag_before = await asyncio.to_thread(read_histogram, lag_url)
    wall0 = time.monotonic()
    try:
        figures = await run_load(plans, options, on_change=on_change)
    finally:
        if monitor is not None:
            await monitor.stop()
    summary = load_summary(figures, options, time.monotonic() - wall0, monitor.summary() if monitor else None)
    if lag_before is not None:
        summary["server_loop_lag_ms"] = histogram_change(lag_before, await asyncio.to_thread(read_histogram, lag_url))
    return summary
