"""HTTP routes of the outbound path, mounted by ivr.server.

- `POST /calls` (JSON `{"to", "from", "flow", "params", "amd"}`) places a call; `GET
  /outbound/calls` lists recent ones (`GET /calls` is the web phone's call viewer). Both need
  `Authorization: Bearer $IVR_API_TOKEN`; without a token set they are off (the server can dial
  numbers: it never does so for anyone who asks).
- `POST /outbound/status` and `POST /outbound/amd`: Twilio's call progress and async AMD
  callbacks, signed like every webhook and refused when the signature fails.

With `IVR_OUTBOUND_RATE`, `POST /calls` places calls at that rate across every pod sharing the
state (ivr.fleet): a request waits for its turn, up to `MAX_PACE_WAIT_S`, else gets 429.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from pathlib import Path

import orjson

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ivr.telephony.twilio_rest import TwilioRest
from ivr.fleet import take_turn
from ivr.logs import mask_number
from ivr.outbound import metrics
from ivr.outbound.amd import AnswerBoard
from ivr.outbound.place import NotPlaced, OutboundRequest, PlaceError, Placer, RateLimited
from ivr.outbound.store import CallStore
from ivr.state import signed_form

log = logging.getLogger("ivr.outbound")

MAX_BODY = 16 * 1024
LIST_LIMIT = 100
#: A POST /calls waits this long at most for its turn at IVR_OUTBOUND_RATE.
MAX_PACE_WAIT_S = 10.0


class Outbound:
    """What the outbound routes share, kept on `app.state.ivr.outbound`."""

    def __init__(self, settings, rest: TwilioRest | None, store: CallStore, shared=None) -> None:
        self.settings = settings
        self.token = settings.api_token
        self.rest = rest
        self.store = store
        self.board = AnswerBoard(shared)
        self.shared = self.board.shared

    def authorised(self, request: Request) -> bool:
        if not self.token:
            return False
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Compared in constant time, as bytes: the token never decides how long a refusal takes.
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


def _outbound(request: Request) -> Outbound:
    return request.app.state.ivr.outbound


def _refuse(outbound: Outbound) -> JSONResponse:
    metrics.API_REQUESTS.labels("unauthorised").inc()
    if not outbound.token:
        return JSONResponse({"error": "the calls API is off: set IVR_API_TOKEN on the server"}, status_code=403)
    return JSONResponse({"error": "a valid bearer token is needed"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def flow_exists(settings, name: str) -> bool:
    """A flow named in a request must be a file beside the server's own flow (no paths)."""
    from ivr.flows import example_path

    base = Path(settings.flow).parent if settings.flow else example_path().parent
    return any((base / candidate).is_file() for candidate in (name, name + ".yaml", name + ".yml"))


async def place_call(request: Request) -> Response:
    outbound = _outbound(request)
    if not outbound.authorised(request):
        return _refuse(outbound)
    body = await read_body(request, MAX_BODY)
    if body is None:
        metrics.API_REQUESTS.labels("bad_request").inc()
        return JSONResponse({"error": f"request too large (at most {MAX_BODY} bytes)"}, status_code=413)
    try:
        # orjson refuses nesting deeper than 1024 as invalid JSON (json.loads would recurse).
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        metrics.API_REQUESTS.labels("bad_request").inc()
        return JSONResponse({"error": "expected a JSON object"}, status_code=400)
    settings = outbound.settings
    try:
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise PlaceError("params: expected an object")
        amd = data.get("amd", True)
        if not isinstance(amd, bool):
            raise PlaceError("amd: expected true or false")
        call = OutboundRequest(
            to=_text(data, "to"),
            from_=_text(data, "from") or settings.caller_id,
            params=params,
            flow=_text(data, "flow"),
            amd=amd,
        )
        call.check()
        if call.flow and not flow_exists(settings, call.flow):
            raise PlaceError(f"flow: no flow named {call.flow!r} beside the server's flow")
    except PlaceError as exc:
        metrics.API_REQUESTS.labels("bad_request").inc()
        return JSONResponse({"error": str(exc)}, status_code=400)
    if outbound.rest is None:
        metrics.API_REQUESTS.labels("unavailable").inc()
        return JSONResponse({"error": "Twilio credentials are not set on the server"}, status_code=503)
    turn = None
    if settings.outbound_rate > 0:
        # The turn is taken across pods (ivr.fleet): two pods together keep the rate.
        def turn():
            return take_turn(outbound.shared, "api", settings.outbound_rate, MAX_PACE_WAIT_S)
    placer = Placer(outbound.rest, request.app.state.ivr.public.base(request), outbound.store)
    try:
        placed = await placer.place(call, turn=turn)
    except RateLimited:
        metrics.API_REQUESTS.labels("rate_limited").inc()
        return JSONResponse({"error": f"calls are placed at {settings.outbound_rate:g}/s (IVR_OUTBOUND_RATE): try again"},
                            status_code=429, headers={"Retry-After": str(math.ceil(MAX_PACE_WAIT_S))})
    except NotPlaced as exc:
        metrics.API_REQUESTS.labels("refused").inc()
        return JSONResponse({"error": f"Twilio refused the call: {exc}"}, status_code=422)
    except PlaceError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except Exception as exc:
        metrics.API_REQUESTS.labels("error").inc()
        return JSONResponse({"error": f"Twilio did not answer: {exc}"}, status_code=502)
    metrics.API_REQUESTS.labels("placed").inc()
    return JSONResponse(placed, status_code=201)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None if it is longer than `limit` bytes: read no further than
    that, whatever Content-Length says (or if it says nothing)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _text(data: dict, key: str) -> str:
    """A string field of a request (absent: empty). Anything else is refused before it is
    turned into text: a nested value could be arbitrarily deep."""
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PlaceError(f"{key}: expected a string")
    return value


async def list_calls(request: Request) -> Response:
    outbound = _outbound(request)
    if not outbound.authorised(request):
        return _refuse(outbound)
    metrics.API_REQUESTS.labels("listed").inc()
    views = (await _calls(outbound.store))[-LIST_LIMIT:]
    return JSONResponse([view_json(v) for v in reversed(views)])


async def _calls(store: CallStore):
    return await asyncio.to_thread(store.calls)


def view_json(v) -> dict:
    return {"id": v.id, "sid": v.sid, "to": mask_number(v.to), "status": v.status, "outcome": v.outcome,
            "answered_by": v.answered_by, "duration_s": v.duration_s, "campaign": v.campaign, "error": v.error}


async def status_callback(request: Request) -> Response:
    form = await signed_form(request, "outbound_status")
    if isinstance(form, Response):
        return form
    sid, status = form.get("CallSid", ""), form.get("CallStatus", "")
    metrics.STATUS.labels(status or "unknown").inc()
    rec = {"kind": "status", "sid": sid, "status": status, "seq": form.get("SequenceNumber", "")}
    if form.get("CallDuration"):
        rec["duration"] = form["CallDuration"]
    if form.get("AnsweredBy"):
        rec["answered_by"] = form["AnsweredBy"]
    if form.get("ErrorCode"):
        rec["error"] = form["ErrorCode"]
    await _outbound(request).store.add(rec)
    log.info("outbound call %s to %s: %s", sid, mask_number(form.get("To", "")), status)
    return Response(status_code=204)


async def amd_callback(request: Request) -> Response:
    form = await signed_form(request, "outbound_amd")
    if isinstance(form, Response):
        return form
    sid, answered_by = form.get("CallSid", ""), form.get("AnsweredBy", "unknown")
    metrics.ANSWERED_BY.labels(answered_by).inc()
    outbound = _outbound(request)
    await outbound.board.post(sid, answered_by)
    await outbound.store.add({"kind": "amd", "sid": sid, "answered_by": answered_by,
                              "detection_ms": form.get("MachineDetectionDuration", "")})
    return Response(status_code=204)


def install(state, rest: TwilioRest | None = None, store: CallStore | None = None) -> list[Route]:
    """Put the outbound state on `state` and return its routes. The call factory, when it can
    wait before greeting, waits for the AMD verdict of outbound calls."""
    settings = state.settings
    outbound = Outbound(settings, rest or TwilioRest.from_env(), store or CallStore(settings.outbound_dir or None),
                        shared=getattr(state, "shared", None))
    state.outbound = outbound
    if hasattr(state.handler_factory, "before_greeting"):
        state.handler_factory.before_greeting = outbound.board.before_greeting
    return [
        Route("/calls", place_call, methods=["POST"]),
        Route("/outbound/calls", list_calls, methods=["GET"]),
        Route("/outbound/status", status_callback, methods=["POST"]),
        Route("/outbound/amd", amd_callback, methods=["POST"]),
    ]
