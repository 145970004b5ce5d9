"""`ivr test [PATH...]`: replay every case (a call script with expectations) against the bot and
fail when a caller would hear something else. Exit 0: all passed; 1: a case failed; 2: usage."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from ivr.commands.replay import carrier_names

#: Where `ivr test` looks for cases when given no PATH.
DEFAULT_CASES = "calls"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "test",
        help="run the regression suite of calls (cases in calls/ by default)",
        description=(
            "Replay each case (a call script with `expect:`) against the bot as Twilio (or --carrier) would, and check what "
            "the caller heard, how soon, and what the bot did. By default starts the bot itself on a free "
            "loopback port, as `ivr serve` would with this environment. Exit 0: all passed; 1: a case failed; "
            "2: a usage error."
        ),
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help=f"case files or folders (default: {DEFAULT_CASES}/)")
    p.add_argument("--flow", metavar="FILE", help="the call flow to test (overrides IVR_FLOW)")
    p.add_argument("--url", help="test a running bot's Media Stream WebSocket instead, e.g. ws://127.0.0.1:8080/media "
                                 "(with --carrier, that carrier's route, e.g. ws://127.0.0.1:8080/media/telnyx; "
                                 "with --carrier audiosocket, its AudioSocket port, e.g. tcp://127.0.0.1:9092)")
    p.add_argument("--carrier", default="twilio", choices=carrier_names(),
                   help="whose side of the calls to play (default twilio): the same cases over another carrier's protocol")
    p.add_argument("--http-url", metavar="URL",
                   help="with --carrier audiosocket --url tcp://…: the bot's HTTP address, for its event side channel "
                        "(default: the URL's host on IVR_PORT, else 8080)")
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), metavar="N",
                   help="cases run at once (default: half the CPUs)")
    p.add_argument("--speed", type=float, default=1.0, help="run the call clock N times faster than real time (default 1)")
    p.add_argument("--margin", type=float, metavar="F",
                   help="multiply every latency budget by F, e.g. 2 on a busy CI machine [IVR_TEST_MARGIN]")
    p.add_argument("--record", nargs="+", metavar="CAPTURE", help="turn captured calls (ivr serve --capture) into cases")
    p.add_argument("--into", metavar="DIR", help="where --record writes the cases")
    p.add_argument("--update", action="store_true", help="accept the differences: rewrite recorded cases' baselines")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML (one testcase per case)")
    p.add_argument("--report", metavar="DIR", help="write each case's report.json, call.wav, timeline.html and an index.html")
    p.add_argument("--max-call", type=float, default=300.0, metavar="S", help="hang up a case's call after S seconds")
    p.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"ivr test: {message}", file=sys.stderr)
    return 2


def _url_problem(url: str, carrier: str) -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if carrier == "audiosocket":
        if parts.scheme != "tcp" or not parts.hostname or not port:
            return f"--url {url}: AudioSocket is TCP: give the bot's AudioSocket port, e.g. tcp://127.0.0.1:9092"
    elif parts.scheme not in ("ws", "wss"):
        hint = " (tcp:// is AudioSocket's: add --carrier audiosocket)" if parts.scheme == "tcp" else ""
        return f"--url {url}: a WebSocket URL, ws://HOST:PORT/ROUTE{hint}"
    return None


def http_side(args: argparse.Namespace) -> str | None:
    """Where a running AudioSocket bot's event side channel is: its tcp:// URL names only the
    AudioSocket port, so its HTTP side is --http-url, or the same host on IVR_PORT as `ivr serve`
    would listen with this environment."""
    if not (args.url and args.carrier == "audiosocket"):
        return None
    if args.http_url:
        return args.http_url
    from urllib.parse import urlsplit

    return f"http://{urlsplit(args.url).hostname}:{os.environ.get('IVR_PORT') or 8080}"


def run(args: argparse.Namespace) -> int:
    from ivr.harness.cases import CaseError, find_cases, parse_case

    if args.margin is None:
        try:
            args.margin = float(os.environ.get("IVR_TEST_MARGIN") or 1.0)
        except ValueError:
            return _usage(f"IVR_TEST_MARGIN={os.environ['IVR_TEST_MARGIN']!r} is not a number")
    if args.jobs < 1 or args.speed <= 0 or args.margin <= 0:
        return _usage("--jobs, --speed and --margin must be above 0")
    if args.record and not args.into:
        return _usage("--record needs --into DIR")
    if args.into and not args.record:
        return _usage("--into goes with --record")
    if args.record and (args.paths or args.update):
        return _usage("--record takes captures, not cases; run the cases afterwards")
    if args.flow and args.url:
        return _usage("--flow starts a bot with that flow; --url tests a running one: choose one")
    if args.url:
        problem = _url_problem(args.url, args.carrier)
        if problem:
            return _usage(problem)
    if args.http_url and not (args.url and args.carrier == "audiosocket"):
        return _usage("--http-url names a running AudioSocket bot's HTTP side: it goes with --carrier audiosocket --url tcp://…")
    if args.http_url and not args.http_url.startswith(("http://", "https://")):
        return _usage(f"--http-url {args.http_url}: the bot's HTTP address, e.g. http://127.0.0.1:8080")
    if args.flow and not Path(args.flow).is_file():
        return _usage(f"--flow {args.flow}: no such file")
    if args.flow:
        from ivr.flows import FlowError, load_flow

        try:
            load_flow(args.flow)
        except FlowError as exc:
            return _usage(f"--flow {args.flow}: {exc}")
    try:
        if args.record:
            from ivr.harness.suite import new_recorded_case

            missing = [c for c in args.record if not Path(c).is_file()]
            if missing:
                return _usage(f"{missing[0]}: no such capture")
            cases = [parse_case(new_recorded_case(Path(c), Path(args.into))) for c in args.record]
        else:
            paths = [Path(p) for p in args.paths] or [Path(DEFAULT_CASES)]
            cases = [parse_case(p) for p in find_cases(paths)]
    except CaseError as exc:
        return _usage(str(exc))
    if not cases:
        return _usage(f"no cases (*.yaml) in {' '.join(args.paths) or DEFAULT_CASES + '/'}")
    with tempfile.TemporaryDirectory(prefix="ivr-test-") as logs:
        return _run_with_bot(args, cases, Path(logs))


def _run_with_bot(args: argparse.Namespace, cases, logs: Path) -> int:
    from rich.console import Console

    from ivr.harness.suite import BotServer

    console = Console(highlight=False, soft_wrap=True)
    server = None
    url = args.url
    try:
        if url is None:
            server = BotServer(args.flow, logs, carrier=args.carrier)
            console.print(f"ivr test: starting the bot on {server.url} ({'flow ' + args.flow if args.flow else 'IVR_FLOW or the example flow'}) ...")
            t0 = time.monotonic()
            try:
                server.start()
            except RuntimeError as exc:
                console.print(f"ivr test: the bot did not start: {exc}\n{server.log_tail()}")
                return 2
            console.print(f"ivr test: bot ready in {time.monotonic() - t0:.1f} s")
            url = server.url
        return asyncio.run(_run_cases(args, cases, url, console, server.http_url if server else None))
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()


def _memo(synthesise):
    """The same caller line is synthesised once per run."""
    done: dict[str, tuple[bytes, int]] = {}
    lock = asyncio.Lock()

    async def cached(text: str) -> tuple[bytes, int]:
        async with lock:
            if text not in done:
                done[text] = await synthesise(text)
            return done[text]

    return cached


async def _run_cases(args: argparse.Namespace, cases, url: str, console, server_http: str | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ivr.harness.judge import Judge
    from ivr.harness.suite import RunOptions, run_cases, update_case
    from ivr.harness.tts import default_synthesiser

    opts = RunOptions(
        url=url, speed=args.speed, margin=args.margin, max_call_s=args.max_call,
        token=os.environ.get("IVR_WEBPHONE_TOKEN") or None,
        auth_token=(os.environ.get("TWILIO_AUTH_TOKEN") or None) if args.url else None,
        synthesise=_memo(default_synthesiser(repeatable=True)),
        judge=Judge.from_env() if any(c.uses_meaning for c in cases) else None,
        carrier=args.carrier, http_url=http_side(args) if args.url else server_http,
    )
    recording = bool(args.record)
    verb = "recording" if recording else "testing"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"{verb} {len(cases)} call(s), {args.jobs} at a time", total=len(cases))

        def done(result) -> None:
            if recording:
                mark = "[green]recorded[/]" if result.outcome is not None and not result.error else "[red]failed[/]"
            else:
                mark = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
            progress.console.print(f"  {mark}  {result.case.name}  [dim]{result.wall_s:.1f} s[/]")
            progress.advance(task)

        results = await run_cases(cases, opts, args.jobs, on_done=done)
    if recording:
        return _recorded(results, console)
    if args.update:
        for r in results:
            # A call that broke is not a new baseline: it stays a failure.
            if r.failures and not r.error and r.case.recorded is not None and r.outcome is not None and not r.outcome.failed:
                update_case(r)
    _print_summary(results, console)
    if args.junit:
        from ivr.harness.suite_report import junit_xml

        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit).write_bytes(junit_xml(results))
        console.print(f"JUnit XML: {args.junit}")
    if args.report:
        from ivr.harness.suite_report import write_report_dir

        console.print(f"reports: {write_report_dir(results, Path(args.report))}")
    return 0 if all(r.passed or r.updated for r in results) else 1


def _recorded(results, console) -> int:
    from ivr.harness.suite import update_case

    status = 0
    for r in results:
        if r.error or r.outcome is None or (r.report and r.report["call"]["failed"]):
            console.print(f"[red]could not record {r.case.call.name}[/]: {r.error or 'the call failed'}")
            status = 1
            continue
        update_case(r, first=True)
        o = r.outcome
        console.print(f"[bold]{r.case.path}[/]: {len(o.replies)} caller turn(s)")
        console.print(f"  greeting: {o.greeting.heard!r}")
        for i, reply in enumerate(o.replies, 1):
            latency = f"{reply.latency_ms:.0f} ms" if reply.latency_ms is not None else "no answer"
            console.print(f"  turn {i}: {reply.caller_text or '(speech)'!s} -> {reply.heard!r} ({latency})")
        if o.tools:
            console.print("  tools: " + ", ".join(t["name"] for t in o.tools))
    return status


def _print_summary(results, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    failed = [r for r in results if not r.passed]
    for r in failed:
        title = f"[bold red]FAILED[/] {escape(r.case.name)}  [dim]({escape(str(r.case.path))})[/]"
        if r.updated:
            title = f"[bold yellow]UPDATED[/] {escape(r.case.name)}  [dim]({escape(str(r.case.path))}: new baseline)[/]"
        console.print(title)
        if r.error:
            console.print(f"  {escape(r.error)}")
        for f in r.failures:
            for line in f.lines():
                console.print("  " + escape(line))
    skipped = [(r, s) for r in results for s in r.skips]
    for r, s in skipped:
        console.print(f"[yellow]skipped[/] {escape(r.case.name)}: {escape(s.where)}: {escape(s.what)} ({escape(s.reason)})")
    table = Table(title="ivr test", title_justify="left")
    for col in ("case", "result", "turns", "checks failed", "skipped", "time"):
        table.add_column(col, justify="right" if col in ("turns", "checks failed", "skipped", "time") else "left")
    for r in results:
        result = "[green]pass[/]" if r.passed else "[yellow]updated[/]" if r.updated else "[red]error[/]" if r.error else "[red]FAIL[/]"
        turns = str(len(r.outcome.replies)) if r.outcome else "-"
        table.add_row(escape(r.case.name), result, turns, str(len(r.failures)), str(len(r.skips)), f"{r.wall_s:.1f} s")
    console.print(table)
    passed = sum(r.passed for r in results)
    updated = sum(r.updated for r in results)
    line = f"{passed} passed, {len(results) - passed - updated} failed"
    if updated:
        line += f", {updated} updated"
    if skipped:
        line += f", {len(skipped)} check(s) skipped"
    console.print(line)
