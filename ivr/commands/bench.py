"""`ivr bench NAME`: benchmarks that print figures (never run as tests)."""

from __future__ import annotations

import argparse
import importlib

#: Benchmarks under ivr.bench, each a module with `add_arguments(parser)` and `run(args)`.
BENCHMARKS = {
    "codec": "per-frame cost of the Twilio media path, inbound and outbound",
    "engines": "embedded engines: STT WER, latency and RTF, TTS first audio, VAD cost, concurrent calls",
    "call": "conversation engine: pipeline overhead, greeting, barge-in and response latency",
    "cloud": "cloud adapters against their fakes: ivr's own share of the response latency",
    "tts-http": "OpenAI speech (raw, SSE) and Azure against their fakes: first byte to first media frame",
    "capacity": "calls per core of one `ivr serve` with the cloud fakes as processes, under `ivr load`",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark and print its figures")
    names = parser.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, help_text in BENCHMARKS.items():
        module = importlib.import_module(f"ivr.bench.{name.replace('-', '_')}")
        p = names.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
