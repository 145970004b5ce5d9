"""`ivr serve`: the Twilio-facing server (TwiML webhooks + Media Stream WebSocket)."""

from __future__ import annotations

import argparse
import logging

from ivr.config import ConfigError, Settings

log = logging.getLogger("ivr.serve")

#: uvicorn refuses (closes with 1009) any WebSocket message over this many times our own bound;
#: messages between the two are skipped as protocol errors and the call goes on.
HARD_LIMIT_FACTOR = 16
#: Settings that also have a command-line option.
OPTIONS = ("host", "port", "public_url", "max_calls", "capture_dir", "log_level", "log_format", "drain_seconds",
           "audiosocket_port")
#: After the drain (ivr.drain), how long uvicorn waits for the last connections before closing them.
SHUTDOWN_SECONDS = 5


def register(sub: argparse._SubParsersAction) -> None:
    env = Settings.env_help()
    p = sub.add_parser(
        "serve",
        help="run the server Twilio calls",
        description="Run the server Twilio calls. Every option can also be set by its environment variable.",
    )
    for name in OPTIONS:
        var, help_text = env[name]
        flag = "--capture" if name == "capture_dir" else "--" + name.replace("_", "-")
        p.add_argument(flag, dest=name, default=None, metavar=var, help=f"{help_text} [{var}]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ivr import logs
    from ivr.server import create_app

    overrides = {k: getattr(args, k) for k in OPTIONS}
    try:
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        print(f"ivr serve: {exc}")
        return 2
    logs.setup(settings.log_level, settings.log_format)
    app = create_app(settings)
    log.info("listening on http://%s:%d (voice webhook POST /twiml/voice, media stream /media)", settings.host, settings.port)
    from ivr.web import startup_lines

    for line in startup_lines(settings):
        print(f"ivr serve: {line}", flush=True)
    from ivr.drain import Drain, DrainingServer

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
    )
    server = DrainingServer(config, Drain.for_app(app))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3
