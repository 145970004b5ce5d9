"""`ivr serve`: the Twilio-facing server (TwiML webhooks + Media Stream WebSocket)."""

from __future__ import annotations

import argparse
import logging
import socket

from ivr.config import ConfigError, Settings
from ivr.errors import UserError

log = logging.getLogger("ivr.serve")

#: uvicorn refuses (closes with 1009) any WebSocket message over this many times our own bound;
#: messages between the two are skipped as protocol errors and the call goes on.
HARD_LIMIT_FACTOR = 16
#: Settings that also have a command-line option.
OPTIONS = ("host", "port", "public_url", "max_calls", "capture_dir", "log_level", "log_format", "drain_seconds",
           "audiosocket_port")
#: After the drain (ivr.drain), how long uvicorn waits for the last connections before closing them.
SHUTDOWN_SECONDS = 5
#: Settings a newcomer changes first, shown with their defaults at the end of `ivr serve --help`.
FIRST_SETTINGS = ("flow", "stt", "tts", "brain")


def register(sub: argparse._SubParsersAction) -> None:
    env = Settings.env_help()
    defaults = Settings()
    p = sub.add_parser(
        "serve",
        help="run the server Twilio calls",
        description="Run the server Twilio calls. Every option can also be set by its environment variable.",
        epilog=_settings_epilog(env, defaults),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name in OPTIONS:
        var, help_text = env[name]
        flag = "--capture" if name == "capture_dir" else "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        shown = f" (default: {default})" if default not in ("", None) else ""
        p.add_argument(flag, dest=name, default=None, metavar=var, help=f"{help_text}{shown} [{var}]")
    p.set_defaults(func=run)


def _settings_epilog(env: dict[str, tuple[str, str]], defaults: Settings) -> str:
    lines = ["what the bot is made of (environment variables; the help says what empty means):"]
    for name in FIRST_SETTINGS:
        var, help_text = env[name]
        default = getattr(defaults, name)
        lines.append(f"  {var:<10} {help_text}" + (f" (default: {default})" if default else ""))
    lines.append("every other setting: ivr/config.py, and the README's table")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ivr import logs
    from ivr.server import create_app

    overrides = {k: getattr(args, k) for k in OPTIONS}
    settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    logs.setup(settings.log_level, settings.log_format)
    _check_port_free(settings.host, settings.port)
    app = create_app(settings)
    log.info("listening on http://%s:%d (voice webhook POST /twiml/voice, media stream /media)", settings.host, settings.port)
    from ivr.web import startup_lines

    for line in startup_lines(settings):
        print(f"ivr serve: {line}", flush=True)
    from ivr.drain import Drain, DrainingServer
    from ivr.ws_protocol import websocket_protocol

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        ws_max_size=settings.max_message_bytes * HARD_LIMIT_FACTOR,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_config=None,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        ws=websocket_protocol(),
    )
    server = DrainingServer(config, Drain.for_app(app))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3


def _check_port_free(host: str, port: int) -> None:
    """Fail before saying anything about this server if another one holds the port (its banner
    would describe a server that never starts). uvicorn binds the port itself just after."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"IVR_HOST: cannot listen on {host!r}: {exc.strerror}", hint="use an address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(address)
            except OSError as exc:
                raise UserError(
                    f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}",
                    hint="another server is using that port: stop it, or choose another with --port (IVR_PORT)",
                ) from None
