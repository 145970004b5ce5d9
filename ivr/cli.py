"""The `ivr` command: one entry point, one module per subcommand under `ivr.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand modules, in the order `ivr --help` lists them. Each has `register(subparsers)`,
#: which adds its parser and sets `func` to a callable taking the parsed arguments.
COMMANDS = ("demo", "serve", "replay", "test", "load", "stt", "tts", "bench", "twilio", "call", "calls")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivr", description="A voice bot for the telephone.")
    from ivr import __version__

    parser.add_argument("--version", action="version", version=f"ivr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ivr.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
