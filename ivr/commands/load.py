"""`ivr load --calls N --ramp S --duration S CALL... --url ...`: concurrent replayed calls."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from ivr.commands.replay import add_call_options, parse_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "load",
        help="run N concurrent replayed calls against one server and report percentiles",
        description=(
            "Run N concurrent replayed calls (the CALL files in turn) against one server for a fixed time, "
            "then print and write p50/p95/p99 of response latency, barge-in latency, inbound frame lag and "
            "outbound jitter, failed calls, and the server's CPU and memory when it runs on this machine."
        ),
    )
    p.add_argument("calls_files", nargs="+", metavar="CALL")
    p.add_argument("--calls", type=int, default=10, help="concurrent calls (default 10)")
    p.add_argument("--ramp", type=float, default=5.0, metavar="S", help="start the calls evenly over S seconds (default 5)")
    p.add_argument("--duration", type=float, default=30.0, metavar="S", help="run for S seconds of wall time (default 30)")
    add_call_options(p)
    p.add_argument("--server-pid", type=int, help="the server's process id (default: whatever listens on the URL's port here)")
    p.add_argument("--out", default="ivr-load.json", help="where to write the JSON summary (default ivr-load.json)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.calls < 1 or args.duration <= 0 or args.ramp < 0:
        print("ivr load: --calls must be at least 1, --duration positive, --ramp not negative")
        return 2
    if args.carrier != "twilio":
        # The load's calls are made as Twilio's (ivr.harness.load names no other carrier).
        print(f"ivr load: --carrier {args.carrier}: load runs speak Twilio only; replay other carriers with ivr replay --carrier")
        return 2
    # uvloop where it is installed (it comes with uvicorn[standard], as the server uses it): the
    # load generator runs a timer, a send and a receive per caller frame, and the pure-Python
    # loop's own bookkeeping was a large share of its CPU.
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    import orjson

    from ivr.harness.load import LoadOptions, run_load_with_monitor
    from ivr.harness.loadview import LoadProgress, format_load_summary
    from ivr.harness.sources import CallSourceError, load_call
    from ivr.harness.tts import NoSynthesiser
    from ivr.heap import freeze_startup_objects

    try:
        params = parse_params(args.param)
        plans = [await load_call(path, channel=args.channel) for path in args.calls_files]
    except (argparse.ArgumentTypeError, CallSourceError, NoSynthesiser) as exc:
        print(f"ivr load: {exc}")
        return 2
    freeze_startup_objects()  # the load generator's own pauses would read as the server's lag
    options = LoadOptions(
        url=args.url, calls=args.calls, ramp_s=args.ramp, duration_s=args.duration, speed=args.speed,
        params=params, auth_token=args.auth_token, sign_url=args.sign_url, marks=args.marks,
    )
    progress = None if args.no_progress else LoadProgress(options)
    if progress is not None:
        progress.start()
    try:
        summary = await run_load_with_monitor(
            plans, options, server_pid=args.server_pid, on_change=progress.update if progress else None
        )
    finally:
        if progress is not None:
            progress.stop()
    Path(args.out).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    print(format_load_summary(summary))
    print(f"  summary {args.out}")
    return 1 if summary["calls_failed"] or summary["frames_after_clear"] else 0
