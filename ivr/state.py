"""What the app's routes share, below the server and the web layers that mount on it.

`IvrState` lives on `app.state.ivr`; `signed_form` reads a Twilio webhook's form once its
signature checks out. The server (ivr.server), the web phone (ivr.web) and the outbound API
(ivr.outbound.routes) all take them from here, so none of them imports another.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.websockets import WebSocket

from ivr import metrics
from ivr.admission import Admission
from ivr.config import Settings
from ivr.fleet import open_shared
from ivr.security import PublicUrl, SignatureChecker
from ivr.session import HandlerFactory, Line

log = logging.getLogger("ivr.server")


class IvrState:
    """Everything the routes share, kept on `app.state.ivr`."""

    def __init__(self, settings: Settings, handler_factory: HandlerFactory) -> None:
        self.settings = settings
        self.public = PublicUrl(settings.public_url, trust_forwarded_host=bool(settings.forwarded_allow_ips))
        self.signatures = SignatureChecker(settings.twilio_auth_token)
        #: What crosses pods (ivr.fleet): Redis with IVR_REDIS_URL, else this process's memory.
        self.shared = open_shared(settings.redis_url)
        self.admission = Admission(settings.max_calls, shared=self.shared)
        self.handler_factory = handler_factory
        #: ivr.web.WebPhone when the web phone is on (set by ivr.web.install).
        self.web = None
        self.ready = False
        self.calls: set[asyncio.Task] = set()
        #: The call handler of each connected stream, for ivr.drain to end them politely.
        self.handlers: dict[str, object] = {}
        #: The idle watch of each connected stream (ivr.idle).
        self.watches: dict = {}
        self._background: set[asyncio.Task] = set()

    def index_call(self, line: Line) -> None:
        """List a captured call in the index of recent calls (/calls on every pod), off the
        stream's path."""
        name = line.capture_name
        if name:
            entry = {"name": name, "pod": getattr(self.shared, "pod", ""), "call_sid": line.start.call_sid}
            task = asyncio.create_task(self.shared.index_call(entry))
            self._background.add(task)
            task.add_done_callback(self._background.discard)


def state_of(conn: Request | WebSocket) -> IvrState:
    return conn.app.state.ivr


async def signed_form(request: Request, route: str) -> dict[str, str] | Response:
    """The webhook's form if its signature is valid, else the 403 to answer with."""
    state = state_of(request)
    form = await request.form()
    url = state.public.webhook_url(request)
    if not state.signatures.valid(request, url, form):
        metrics.SIGNATURE_FAILURES.labels(route).inc()
        metrics.WEBHOOKS.labels(route, "forbidden").inc()
        log.warning("refused %s: X-Twilio-Signature missing or not valid for %s", route, url)
        return PlainTextResponse("invalid Twilio signature\n", status_code=403)
    return {k: str(v) for k, v in form.items()}
