"""HTTP and WebSocket routes of the web phone and the call viewer."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
from importlib.resources import files

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ivr.web.access import COOKIE

log = logging.getLogger("ivr.web")

STATIC = {
    "phone.js": "text/javascript",
    "phone-worklet.js": "text/javascript",
    "phone.css": "text/css",
}
#: A subscription with no call after this long is dropped (the browser gave up or never dialled).
SUBSCRIBE_TIMEOUT_S = 60.0
#: A stream's id: Twilio's MZ…, or another carrier's (a UUID, Telnyx's or Vonage's ids).
_SID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{7,99}")
#: Pages are ours only: no framing, no third-party scripts, no referrer with paths.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _web(conn: HTTPConnection):
    return conn.app.state.ivr.web


def _static_text(name: str) -> str:
    return files("ivr.web").joinpath("static", name).read_text(encoding="utf-8")


def _refused(conn: HTTPConnection) -> Response | None:
    refusal = _web(conn).access.refusal(conn)
    if refusal is None:
        return None
    status, reason = refusal
    if status == 401 and conn.scope["type"] == "http" and conn.url.path == "/phone":
        return HTMLResponse(_login_page(""), status_code=401, headers=_HEADERS)
    log.warning("web phone: refused %s %s: %s", conn.scope["type"], conn.url.path, reason)
    return PlainTextResponse(reason + "\n", status_code=status, headers=_HEADERS)


def _login_page(message: str) -> str:
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ivr web phone: sign in</title>'
        '<link rel="stylesheet" href="/phone/static/phone.css"></head><body class="login"><main>'
        "<h1>ivr web phone</h1><p>This server is reachable from outside: enter its web phone token "
        "(IVR_WEBPHONE_TOKEN).</p>"
        f'{note}<form method="post" action="/phone/login"><input type="password" name="token" '
        'autocomplete="current-password" autofocus required> <button>Sign in</button></form></main></body></html>'
    )


async def phone(request: Request) -> Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    return HTMLResponse(_static_text("phone.html"), headers=_HEADERS)


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC:
        return PlainTextResponse("not found\n", status_code=404)
    # The stylesheet also dresses the sign-in page, so it is served before the token check.
    if name != "phone.css":
        refused = _refused(request)
        if refused is not None:
            return refused
    return Response(_static_text(name), media_type=STATIC[name], headers=_HEADERS)


async def login(request: Request) -> Response:
    access = _web(request).access
    if not access.token_required or not access.token:
        return _refused(request) or RedirectResponse("/phone", status_code=303)
    origin = access.refusal(request)
    if origin is not None and origin[0] == 403:
        return PlainTextResponse(origin[1] + "\n", status_code=403)
    form = await request.form()
    if not access.token_matches(str(form.get("token", ""))):
        log.warning("web phone: wrong token from %s", request.client.host if request.client else "?")
        await asyncio.sleep(1.0)  # slows guessing; the event loop is free meanwhile
        return HTMLResponse(_login_page("That is not the token."), status_code=401, headers=_HEADERS)
    response = RedirectResponse("/phone", status_code=303)
    secure = access.public_url.startswith("https://") or request.url.scheme == "https"
    response.set_cookie(COOKIE, access.session_value(), httponly=True, samesite="strict", secure=secure, path="/")
    return response


async def events(websocket: WebSocket) -> None:
    """The side channel: one call's engine events, as JSON text frames (see README.md)."""
    refused = _refused(websocket)
    if refused is not None:
        await _deny(websocket, refused)
        return
    sid = websocket.query_params.get("streamSid", "")
    if not _SID.fullmatch(sid):
        await _deny(websocket, PlainTextResponse("streamSid must be a stream's id (letters, digits, _ . : -)\n", status_code=400))
        return
    hub = _web(websocket).hub
    sub = hub.subscribe(sid)
    if sub is None:
        await _deny(websocket, PlainTextResponse("this stream already has a subscriber\n", status_code=409))
        return
    try:
        await websocket.accept()
        await websocket.send_text('{"type":"hello"}')
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(_until_closed(websocket))
            writer = group.create_task(_forward(websocket, sub))
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, writer):
                task.cancel()
    except* (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _until_closed(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass  # the browser has nothing to say here


async def _forward(websocket: WebSocket, sub) -> None:
    try:
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            await sub.bound.wait()
    except TimeoutError:
        return
    while True:
        event = await sub.queue.get()
        await websocket.send_text(orjson.dumps(event).decode())
        if event.get("type") == "ended":
            return


async def _deny(websocket: WebSocket, response: Response) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008)


async def calls(request: Request) -> Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    from ivr.web.calls import MAX_LISTED, calls_page

    # Every pod's calls (ivr.fleet): the files themselves are read from this pod's capture dir.
    indexed = await request.app.state.ivr.shared.recent_calls(MAX_LISTED)
    body = await asyncio.to_thread(calls_page, _web(request).capture_dir, indexed)
    return HTMLResponse(body, headers=_HEADERS)


async def call_timeline(request: Request) -> Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    from ivr.web.calls import CaptureNotFound, timeline_page

    try:
        body = await asyncio.to_thread(timeline_page, _web(request).capture_dir, request.path_params["name"])
    except CaptureNotFound:
        return PlainTextResponse("no such call\n", status_code=404)
    # The timeline page is self-contained with an inline script: it gets its own policy.
    headers = dict(_HEADERS)
    headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; media-src data:; img-src data:; frame-ancestors 'none'"
    )
    return HTMLResponse(body, headers=headers)


def routes() -> list:
    return [
        Route("/phone", phone, methods=["GET"]),
        Route("/phone/login", login, methods=["POST"]),
        Route("/phone/static/{name}", static, methods=["GET"]),
        WebSocketRoute("/phone/events", events),
        Route("/calls", calls, methods=["GET"]),
        Route("/calls/{name}", call_timeline, methods=["GET"]),
    ]
