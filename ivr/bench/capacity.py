"""`ivr bench capacity`: concurrent calls per core of one `ivr serve` with the cloud adapters.

Every piece is its own process on 127.0.0.1, as in production where the clouds are elsewhere:
the Deepgram, OpenAI and ElevenLabs fakes (tests/fakes, in a source checkout), one `ivr serve`
pointed at them, and `ivr load` replaying calls at it. For each N the load runs N concurrent
calls for the duration; the server's CPU is read from its own cpu_times over the steady window
(after the ramp), so the figure is the server's alone, not the fakes' nor the harness's.

calls/core = N / (server CPU seconds / wall seconds): how many calls one fully used core carries.

Inbound frame lag is measured by the load generator (how late each 20 ms caller frame left it):
when the harness itself nears a full core the lag is the harness's, not the server's, so its CPU
is printed beside it, and beside that the server's own event-loop lag (`ivr_loop_lag_seconds`
from its /metrics over the same run). The fakes' CPU is printed too: on a small machine they
compete with the server for the same cores. So are the load average and the host's CPU steal
during each level: on a shared or virtual machine they say how much of a figure is the machine.

Memory: the server's resident set once it is ready (the base), and at the end of each level's
steady window; per call is (RSS at N - base) / N, per added call the growth since the previous
level over the calls added.

The providers' concurrency limits (IVR_DEEPGRAM_MAX_STREAMS and the like, 100 by default) are
raised above the largest N unless --server-env sets them: a call that outlives its slot (the
load replaces it at once) would otherwise wait for a stream and go unanswered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from ivr.bench.procs import STT_TEXT, Procs, cpu_steal, have_fakes, run_processes, start_fakes, start_server, steal_share

SAMPLES = Path(__file__).resolve().parents[1] / "harness" / "samples"

# The OpenAI brain needs a flow with a system prompt (as tests/test_cloud_e2e.py uses).
FLOW = textwrap.dedent("""\
    name: Sunrise Bakery (LLM)
    greeting: "Thanks for calling Sunrise Bakery. How can I help?"
    system_prompt: You answer the phone for Sunrise Bakery.
    llm: {first_token_timeout: 2}
    nodes: {main: {say: unused with the LLM}}
    """)
#: Concurrency limits of the cloud adapters, raised above the load (see the module's docstring).
PROVIDER_LIMITS = ("IVR_DEEPGRAM_MAX_STREAMS", "IVR_OPENAI_MAX_REQUESTS", "IVR_ELEVENLABS_MAX_SOCKETS")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", default="10,25,50,100", help="concurrent calls to try, comma-separated (default 10,25,50,100)")
    p.add_argument("--duration", type=float, default=30, help="seconds of load at each N (default 30)")
    p.add_argument("--ramp", type=float, default=5, help="seconds over which the N calls start (default 5)")
    p.add_argument("--call", action="append", metavar="FILE",
                   help="call script to replay (repeatable; default the hours sample)")
    p.add_argument("--stt-ms", type=float, default=150, help="Deepgram fake: final delay (default 150)")
    p.add_argument("--llm-ms", type=float, default=300, help="OpenAI fake: first token delay (default 300)")
    p.add_argument("--tts-ms", type=float, default=150, help="ElevenLabs fake: first audio delay (default 150)")
    p.add_argument("--cached-replies", action="store_true",
                   help="the LLM gives the same answer every time, so the TTS is skipped from the cache")
    p.add_argument("--stt-text", default=STT_TEXT,
                   help=f"what the Deepgram fake hears every caller say (default {STT_TEXT!r}: a whole question "
                        "ends the turn without the end-of-turn model; a statement is judged by it)")
    p.add_argument("--lag-limit-ms", type=float, default=20, help="inbound frame lag p99 that still counts (default 20)")
    p.add_argument("--response-limit-ms", type=float, default=2500,
                   help="response p95 that still counts (default 2500: about twice an unloaded answer's)")
    p.add_argument("--server-env", action="append", default=[], metavar="IVR_NAME=VALUE",
                   help="a setting for the server under load (repeatable), e.g. IVR_DEEPGRAM_CHUNK_MS=100")


def _cpu_s(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system + getattr(t, "children_user", 0) + getattr(t, "children_system", 0)


def run(args: argparse.Namespace) -> int:
    if not have_fakes():
        print("ivr bench capacity needs a source checkout (it starts the fakes in tests/fakes)", file=sys.stderr)
        return 2
    try:
        import psutil
    except ImportError:
        print("ivr bench capacity needs psutil to read the processes' CPU", file=sys.stderr)
        return 2
    try:
        levels = [int(n) for n in args.calls.split(",") if n.strip()]
    except ValueError:
        print(f"--calls: comma-separated numbers, not {args.calls!r}", file=sys.stderr)
        return 2
    calls = [str(Path(c).resolve()) for c in (args.call or [SAMPLES / "hours.yaml"])]
    server_env = {}
    for item in args.server_env:
        name, eq, value = item.partition("=")
        if not eq or not name.startswith("IVR_"):
            print(f"--server-env: IVR_NAME=VALUE, not {item!r}", file=sys.stderr)
            return 2
        server_env[name] = value
    for limit in PROVIDER_LIMITS:
        server_env.setdefault(limit, str(2 * max(levels, default=1)))

    def measure(procs: Procs, tmp: Path) -> int:
        flow = tmp / "flow.yaml"
        flow.write_text(FLOW)
        # Varied replies: every answer is new text, spoken by ElevenLabs (a repeated one would
        # come from the prompt cache and leave the TTS path idle).
        fakes = start_fakes(procs, args.stt_ms, args.llm_ms, args.tts_ms, varied=not args.cached_replies,
                            stt_text=args.stt_text)
        server, port = start_server(procs, fakes, flow, server_env)

        watched = {name: psutil.Process(p.pid) for name, p in procs.procs.items()}
        base_rss = _rss_mb(watched["server"])
        rows = []
        print(f"ivr serve pid {server.pid}, fakes on 127.0.0.1 (STT final +{args.stt_ms:g} ms, first token "
              f"{args.llm_ms:g} ms, first audio {args.tts_ms:g} ms), {os.cpu_count()} cores; "
              f"{args.duration:g} s per N, ramp {args.ramp:g} s"
              + "".join(f"; {k}={v}" for k, v in server_env.items()), flush=True)
        print(f"server RSS once ready (the base): {base_rss:.0f} MB; load average before the run "
              f"{_loadavg()}", flush=True)
        for n in levels:
            rows.append(_one_level(n, args, calls, port, server.pid, procs, watched, tmp))
            row = rows[-1]
            row["rss_per_call"] = (row["rss_end"] - base_rss) / n
            prev = rows[-2] if len(rows) > 1 else None
            row["rss_per_added_call"] = ((row["rss_end"] - prev["rss_end"]) / (n - prev["n"])
                                         if prev is not None and n > prev["n"] else None)
            _print_row(rows[-1], args.lag_limit_ms)
        _print_table(rows, args.lag_limit_ms, args.response_limit_ms, base_rss)
        return 0

    return run_processes("ivr bench capacity", measure)


def _one_level(n, args, calls, port, server_pid, procs, watched, tmp: Path) -> dict:
    out = tmp / f"load-{n}.json"
    argv = [sys.executable, "-m", "ivr", "load", *calls, "--url", f"ws://127.0.0.1:{port}/media",
            "--calls", str(n), "--ramp", str(args.ramp), "--duration", str(args.duration),
            "--server-pid", str(server_pid), "--out", str(out), "--no-progress"]
    import psutil

    turns0 = _turn_decisions(port)
    load = procs.start(f"load-{n}", argv)
    harness = psutil.Process(load.pid)
    # The steady window: after every call has started, before the deadline cuts them.
    t_start = time.monotonic()
    time.sleep(min(args.ramp + 1, args.duration / 2))
    cpu0 = {name: _cpu_s(p) for name, p in watched.items()}
    h0, w0, steal0 = _cpu_s(harness), time.monotonic(), cpu_steal()
    time.sleep(max(1.0, t_start + args.duration - 1 - time.monotonic()))
    cpu1 = {name: _cpu_s(p) for name, p in watched.items()}
    h1, w1, steal1 = _cpu_s(harness), time.monotonic(), cpu_steal()
    rss_end, loadavg = _rss_mb(watched["server"]), _loadavg()
    load.wait(timeout=args.duration + 120)
    turns1 = _turn_decisions(port)
    turns = {k: v - turns0.get(k, 0) for k, v in turns1.items() if v - turns0.get(k, 0) > 0}
    if not out.exists():
        raise RuntimeError(f"ivr load wrote no summary (exit {load.returncode}): {procs.log_tail(f'load-{n}')}")
    del procs.procs[f"load-{n}"]
    s = json.loads(out.read_text())
    wall = w1 - w0
    cores = {name: (cpu1[name] - cpu0[name]) / wall for name in watched}
    server_cores = cores.pop("server")
    return {
        "n": n, "server_cores": server_cores, "calls_per_core": n / server_cores if server_cores > 0 else float("inf"),
        "harness_cores": (h1 - h0) / wall, "fakes_cores": sum(cores.values()), "fakes": cores,
        "lag": s["inbound_frame_lag_ms"], "resp": s["response_latency_ms"], "jitter": s["outbound_jitter_ms"],
        "started": s["calls_started"], "failed": s["calls_failed"], "cut": s["calls_cut_at_deadline"], "unanswered": s["unanswered_turns"],
        "rss": (s.get("server") or {}).get("rss_mb_max"), "rss_end": rss_end,
        "loop_lag": s.get("server_loop_lag_ms"), "loadavg": loadavg, "steal": steal_share(steal0, steal1),
        "turns": turns,
    }


def _turn_decisions(port: int) -> dict[str, float]:
    """`ivr_turn_decisions_total` by outcome, from the server's /metrics ({} without a turn model)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.labels.get("outcome", ""): sample.value
            for family in text_string_to_metric_families(text) if family.name == "ivr_turn_decisions"
            for sample in family.samples if sample.name == "ivr_turn_decisions_total"}


def _rss_mb(proc) -> float:
    return proc.memory_info().rss / 2**20


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "-"


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _lag(lag: dict | None) -> str:
    """The server's loop lag as the histogram's bucket bounds: '<=p50 / <=p99' (ms)."""
    if not lag or not lag["n"]:
        return "-"

    def le(bound: float | None) -> str:
        return "inf" if bound is None else f"{bound:g}"

    return f"<={le(lag['p50_le'])} / <={le(lag['p99_le'])}"


def _print_row(r: dict, limit: float) -> None:
    fakes = ", ".join(f"{k} {v:.3f}" for k, v in r["fakes"].items())
    steal = "-" if r["steal"] is None else f"{100 * r['steal']:.1f} %"
    print(f"N={r['n']}: server {r['server_cores']:.3f} cores -> {r['calls_per_core']:.0f} calls/core; "
          f"harness {r['harness_cores']:.3f} cores ({r['harness_cores'] / r['server_cores']:.3f} of the server's); "
          f"fakes {fakes}; server RSS {r['rss_end']:.0f} MB at the end of the window "
          f"({r['rss_per_call']:.2f} MB per call over the base, {_f(r['rss_per_added_call'], '{:.2f}')} MB per call "
          f"added since the last level), max {_f(r['rss'], '{:.0f}')} MB; "
          f"server loop lag p50/p99 {_lag(r['loop_lag'])} ms; load average {r['loadavg']}, steal {steal}; "
          f"turn decisions {_turns(r['turns'])}; "
          f"{r['cut']} calls cut at the deadline (their last turn may count as unanswered)", flush=True)


def _turns(turns: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in sorted(turns.items())) or "none (no turn model, or none asked)"


def _print_table(rows: list[dict], limit: float, response_limit: float, base_rss: float) -> None:
    print()
    print(f"server RSS once ready: {base_rss:.0f} MB")
    print("| calls | server cores | calls/core | frame lag p50 / p99 ms | server loop lag p50 / p99 ms | response p50 / p95 ms "
          "| failed | unanswered turns | harness cores (of the server's) | fakes cores | RSS MB (per call / per added call) | load avg | steal |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        steal = "-" if r["steal"] is None else f"{100 * r['steal']:.1f} %"
        print(f"| {r['n']} | {r['server_cores']:.3f} | {r['calls_per_core']:.0f} | {_f(r['lag']['p50'])} / {_f(r['lag']['p99'])} "
              f"| {_lag(r['loop_lag'])} | {_f(r['resp']['p50'], '{:.0f}')} / {_f(r['resp']['p95'], '{:.0f}')} | {r['failed']} / {r['started']} "
              f"| {r['unanswered']} | {r['harness_cores']:.3f} ({r['harness_cores'] / r['server_cores']:.3f}) | {r['fakes_cores']:.2f} "
              f"| {r['rss_end']:.0f} ({r['rss_per_call']:.2f} / {_f(r['rss_per_added_call'], '{:.2f}')}) "
              f"| {r['loadavg']} | {steal} |")
    # Frames on time are not enough: a server whose answers come seconds late is overloaded too.
    ok = [r for r in rows if r["lag"]["p99"] is not None and r["lag"]["p99"] < limit and not r["failed"]
          and r["resp"]["p95"] is not None and r["resp"]["p95"] <= response_limit]
    rule = f"frame lag p99 < {limit:g} ms, response p95 <= {response_limit:g} ms and no failed call"
    if ok:
        best = max(ok, key=lambda r: r["n"])
        print(f"\nlargest N with {rule}: {best['n']} calls, {best['calls_per_core']:.0f} calls per server core")
    else:
        print(f"\nno N kept {rule}")
    if any(r["harness_cores"] > 0.8 for r in rows):
        print("note: the load generator neared a full core at some N: its frame lag there is the harness's own")
