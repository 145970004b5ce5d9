"""`ivr replay CALL --url ws://HOST:PORT/media`: call the bot as Twilio would and report."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from pathlib import Path


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--param {item!r}: use NAME=VALUE")
        params[key] = value
    return params


def add_call_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `replay` and `load`."""
    p.add_argument("--url", required=True, help="the bot's Media Stream WebSocket, e.g. ws://127.0.0.1:8080/media")
    p.add_argument("--speed", type=float, default=1.0, help="run the call clock N times faster than real time (default 1)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a <Parameter> sent in start.customParameters (repeatable)")
    p.add_argument("--channel", default="left", help="caller channel of stereo recordings: left, right or a number (default left)")
    p.add_argument(
        "--auth-token",
        default=os.environ.get("TWILIO_AUTH_TOKEN") or None,
        help="sign the upgrade with X-Twilio-Signature using this token [TWILIO_AUTH_TOKEN]",
    )
    p.add_argument("--sign-url", help="the wss:// URL to sign, as written in the TwiML (default: --url)")
    p.add_argument(
        "--carrier", default="twilio", choices=carrier_names(),
        help="whose side of the call to play (default twilio); the URL is that carrier's route on the bot "
             "(e.g. ws://HOST:PORT/media/telnyx), or tcp://HOST:PORT for audiosocket",
    )
    p.add_argument(
        "--marks", default="on", type=mark_echoes, metavar="on|late:MS|never",
        help="how marks are echoed: on time as Twilio does (default), MS late (a lossy link), or never (a carrier without marks)",
    )


def carrier_names() -> tuple[str, ...]:
    from ivr.harness.carriers import CARRIERS

    return CARRIERS


def mark_echoes(text: str):
    from ivr.harness.emulator import MarkEchoes

    try:
        return MarkEchoes.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a call against the bot as Twilio would",
        description=(
            "Replay a call against a bot as Twilio would: media every 20 ms, marks echoed when played, "
            "clear honoured. CALL is a WAV/FLAC/raw mu-law recording, a Twilio capture (.jsonl) or a call "
            "script (.yaml). Writes report.json, call.wav and timeline.html."
        ),
    )
    p.add_argument("calls", nargs="+", metavar="CALL")
    add_call_options(p)
    p.add_argument("--out", default="ivr-replay", help="output directory (one subdirectory per call when several)")
    p.add_argument("--transcribe", action="store_true", help="transcribe the bot's audio with the embedded STT")
    p.add_argument("--max-call", type=float, default=600.0, metavar="S", help="hang up after S seconds of call time")
    p.set_defaults(func=run)


def out_dir_for(base: Path, call: str, several: bool) -> Path:
    if not several:
        return base
    return base / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(call).stem)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.run import replay_file
    from ivr.harness.sources import CallSourceError
    from ivr.harness.summary import format_summary
    from ivr.harness.tts import NoSynthesiser

    try:
        params = parse_params(args.param)
    except argparse.ArgumentTypeError as exc:
        print(f"ivr replay: {exc}")
        return 2
    transcribe = None
    if args.transcribe:
        try:
            from ivr.harness.transcribe import local_transcriber

            transcribe = local_transcriber()
        except ImportError as exc:
            print(f"ivr replay: --transcribe needs the embedded STT (pip install '.[local]'): {exc}")
            return 2
    status = 0
    several = len(args.calls) > 1
    for call in args.calls:
        options = ReplayOptions(
            url=args.url, speed=args.speed, params=params, auth_token=args.auth_token,
            sign_url=args.sign_url, max_call_s=args.max_call, marks=args.marks, carrier=args.carrier,
        )
        try:
            outputs = await replay_file(
                call, options, out_dir_for(Path(args.out), call, several),
                channel=args.channel, transcribe=transcribe,
            )
        except (CallSourceError, NoSynthesiser) as exc:
            print(f"ivr replay: {exc}")
            status = 2
            continue
        print(format_summary(outputs.report))
        print(f"  report {outputs.report_path}\n  audio  {outputs.wav_path}\n  page   {outputs.html_path}\n")
        report = outputs.report
        if report["call"]["failed"] or any(b["frames_after_clear"] for b in report["barge_ins"]):
            status = max(status, 1)
    return status
