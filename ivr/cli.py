"""The `ivr` command: one entry point, one module per subcommand under `ivr.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Subcommand modules, in the order `ivr --help` lists them. Each has `register(subparsers)`,
#: which adds its parser and sets `func` to a callable taking the parsed arguments.
COMMANDS = ("demo", "serve", "replay", "test", "load", "stt", "tts", "bench", "twilio", "call", "calls")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivr", description="A voice bot for the telephone.")
    from ivr import __version__

    parser.add_argument("--version", action="version", version=f"ivr {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ivr.commands.{name}").register(sub)
    for command in sub.choices.values():  # `ivr serve --debug` as well as `ivr --debug serve`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


DEBUG_HELP = "on an error, show the full traceback (also with IVR_LOG_LEVEL=debug)"


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
    except Exception as exc:
        if args.debug or os.environ.get("IVR_LOG_LEVEL", "").strip().lower() == "debug":
            raise
        from ivr.errors import explain

        lines, status = explain(exc, args.command)
        print("\n".join(lines), file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
