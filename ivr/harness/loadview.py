"""What `ivr load` shows: a live progress display (rich) and the final figures."""

from __future__ import annotations

import time

from ivr.harness.load import LoadFigures, LoadOptions
from ivr.harness.report import percentiles


class LoadProgress:
    """A rich progress bar over the run's duration, with the running figures beside it."""

    def __init__(self, options: LoadOptions) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.options = options
        self._progress = Progress(
            TextColumn("[bold]load"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            refresh_per_second=4,
        )
        self._task = self._progress.add_task("load", total=options.duration_s, status="starting")
        self._t0 = 0.0
        self._last = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._progress.start()

    def update(self, figures: LoadFigures) -> None:
        now = time.monotonic()
        if now - self._last < 0.25:  # per-call callbacks can be frequent; the screen needs 4 Hz
            return
        self._last = now
        p50 = percentiles(figures.response_ms[-500:])["p50"]
        status = (
            f"active {figures.active}  done {figures.completed}  failed {figures.failed}"
            f"  response p50 {'-' if p50 is None else f'{p50:.0f} ms'}"
        )
        self._progress.update(self._task, completed=min(now - self._t0, self.options.duration_s), status=status)

    def stop(self) -> None:
        self._progress.update(self._task, completed=self.options.duration_s)
        self._progress.stop()


def _pct(p: dict) -> str:
    if not p["n"]:
        return "-"
    return f"p50 {p['p50']:.0f}  p95 {p['p95']:.0f}  p99 {p['p99']:.0f}  max {p['max']:.0f} ms  (n={p['n']})"


def _le(bound: float | None) -> str:
    return "inf" if bound is None else f"{bound:g}"


def format_load_summary(s: dict) -> str:
    lines = [
        f"load: {s['calls']} concurrent calls for {s['duration_s']:g} s (ramp {s['ramp_s']:g} s, speed x{s['speed']:g}) -> {s['url']}",
        f"  calls: {s['calls_started']} started, {s['calls_completed']} ended, {s['calls_failed']} failed,"
        f" {s['calls_cut_at_deadline']} cut at the deadline",
        f"  response latency   {_pct(s['response_latency_ms'])}; {s['unanswered_turns']} turns unanswered",
        f"  barge-in latency   {_pct(s['barge_in_latency_ms'])}; {s['barge_ins_without_clear']} without clear,"
        f" {s['frames_after_clear']} frames after clear",
        f"  inbound frame lag  {_pct(s['inbound_frame_lag_ms'])}",
        f"  outbound jitter    {_pct(s['outbound_jitter_ms'])}; {s['outbound_underruns']} underruns",
        f"  outbound lead      {_pct(s['outbound_lead_ms'])}",
    ]
    server = s.get("server")
    if server and server.get("samples"):
        lines.append(
            f"  server pid {server['pid']}: CPU mean {server['cpu_percent_mean']}% max {server['cpu_percent_max']}%"
            f" (100% = one core), memory max {server['rss_mb_max']} MB"
        )
    lag = s.get("server_loop_lag_ms")
    if lag and lag["n"]:
        # Told apart from the frame lag above, which also holds the load generator's own lateness.
        lines.append(
            f"  server loop lag    p50 <= {_le(lag['p50_le'])}  p99 <= {_le(lag['p99_le'])}  max <= {_le(lag['max_le'])} ms"
            f"  (n={lag['n']}, the server's own ivr_loop_lag_seconds)"
        )
    for f in s["failures"][:5]:
        e = f["error"] or {}
        lines.append(f"  failed {f['call']} {f['call_sid']}: {e.get('kind')}: {e.get('detail')}")
    return "\n".join(lines)
