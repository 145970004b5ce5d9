"""The web phone (/phone) and the call viewer (/calls): see README.md here.

`install(state)` is all the server calls: it decides whether the pages are on (ivr.web.access),
hooks the call engine's events to the web phone's side channel and to the capture, and returns
the routes to mount.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ivr.web.access import WebAccess
from ivr.web.hub import EventHub

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from ivr.session import Line
    from ivr.state import IvrState


class WebPhone:
    """What the web routes share, kept on the server's state as `state.web`."""

    def __init__(self, access: WebAccess, hub: EventHub, capture_dir: str) -> None:
        self.access = access
        self.hub = hub
        self.capture_dir = capture_dir

    def allows_media(self, websocket) -> bool:
        """May this /media upgrade, unsigned by Twilio, go on as a web phone call?

        Without a token, only a browser's (it sends this server's own Origin): other local
        clients still need Twilio's signature when TWILIO_AUTH_TOKEN is set."""
        if self.access.refusal(websocket) is not None:
            return False
        return self.access.token_required or "origin" in websocket.headers


def listener_for(hub: EventHub | None, line: "Line"):
    """The call's event listener: the web phone subscriber of its stream and/or its capture."""
    sub = hub.bind(line.start.stream_sid) if hub is not None else None
    capture = line.capturing
    if sub is None and not capture:
        return None

    def listen(event: dict) -> None:
        if capture:
            line.capture_event(event)
        if sub is not None:
            sub.publish(event)

    return listen


def install(state: "IvrState") -> list["BaseRoute"]:
    access = WebAccess.from_settings(state.settings)
    hub = EventHub() if access.enabled else None
    factory = state.handler_factory
    if hasattr(factory, "listen"):  # a CallFactory: publishes the engine's events
        factory.listen = lambda line: listener_for(hub, line)
    if not access.enabled:
        state.web = None
        return []
    from ivr.web.routes import routes

    state.web = WebPhone(access, hub, state.settings.capture_dir)
    return routes()


def startup_lines(settings, base: str | None = None) -> list[str]:
    """What `ivr serve` prints about the web phone at start-up (never the token)."""
    access = WebAccess.from_settings(settings)
    if not access.enabled:
        return []
    if base is None:
        base = access.public_url or f"http://{_display_host(settings.host)}:{settings.port}"
    lines = [f"web phone: {base}/phone   call viewer: {base}/calls"]
    if access.misconfigured:
        lines.append("web phone: REFUSED until IVR_WEBPHONE_TOKEN is set (the server is reachable from outside)")
    elif access.token_required:
        lines.append("web phone: sign in with IVR_WEBPHONE_TOKEN")
    if not settings.capture_dir:
        lines.append("call viewer: capture is off; start with --capture DIR to see calls at /calls")
    return lines


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


