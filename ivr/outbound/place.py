"""Placing one call: `calls.create` with the server's `<Connect><Stream>` TwiML.

The TwiML is sent inline (`twiml=`), so the call's parameters need no server-side state: they
travel as `<Parameter>`s and come back in the stream's `start.customParameters`, where the flow
reads them as `{name}`. Twilio's async answering-machine detection (`DetectMessageEnd`) runs
beside the stream and posts its verdict to /outbound/amd; call progress goes to /outbound/status.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

from twilio.twiml.voice_response import VoiceResponse

from ivr.telephony.twilio_rest import TwilioRest
from ivr.logs import mask_number
from ivr.outbound import metrics
from ivr.outbound.store import CallStore
from ivr.telephony.twiml import stream_url_for

log = logging.getLogger("ivr.outbound")

E164 = re.compile(r"\+[1-9]\d{6,14}")
TARGET = re.compile(r"\+[1-9]\d{6,14}|sips?:[^\s<>\"]+|client:[A-Za-z0-9_.-]+")
CLIENT = re.compile(r"client:[A-Za-z0-9_.-]+")
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
FLOW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: Names the server itself sets on the stream: a request cannot forge them.
RESERVED_PARAMS = frozenset({"From", "To", "CallSid", "AnsweredBy"})
RESERVED_PREFIX = "Ivr"
#: Twilio refuses inline TwiML over 4000 characters: keep well inside with the parameters.
MAX_PARAMS = 20
MAX_VALUE = 256
MAX_TWIML = 4000
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")

# Stream parameters the outbound path adds (read by ivr.outbound.amd and ivr.providers.flow).
P_DIRECTION = "IvrDirection"
P_CALL_ID = "IvrCallId"
P_AMD = "IvrAmd"
P_FLOW = "IvrFlow"


class PlaceError(ValueError):
    """The request is wrong (bad number, parameter...): nothing was sent to Twilio."""


class NotPlaced(RuntimeError):
    """Twilio refused the call outright (an HTTP error): no call exists."""


class RateLimited(NotPlaced):
    """Its turn at the placing rate was too far off: not sent, no call exists."""


@dataclass(frozen=True)
class OutboundRequest:
    to: str
    from_: str
    params: Mapping[str, str] = field(default_factory=dict)
    flow: str = ""
    amd: bool = True
    campaign: str = ""
    #: Seconds to ring before "no-answer" (Twilio's default is 60).
    ring_timeout: int = 30

    def check(self) -> "OutboundRequest":
        if not TARGET.fullmatch(self.to):
            raise PlaceError(f"to: {mask_number(self.to)!r} is not an E.164 number (+15551234567) or a sip: URI")
        if not (E164.fullmatch(self.from_) or CLIENT.fullmatch(self.from_)):
            raise PlaceError("from: needs an E.164 number of the Twilio account (or set IVR_CALLER_ID)")
        if self.flow and not FLOW_NAME.fullmatch(self.flow):
            raise PlaceError(f"flow: {self.flow!r} must be a flow file name (letters, digits, . _ -)")
        if len(self.params) > MAX_PARAMS:
            raise PlaceError(f"params: at most {MAX_PARAMS}")
        for name, value in self.params.items():
            if not isinstance(name, str) or not PARAM_NAME.fullmatch(name):
                raise PlaceError(f"params: {name!r} is not a name (letters, digits, _)")
            if name in RESERVED_PARAMS or name.startswith(RESERVED_PREFIX):
                raise PlaceError(f"params: {name!r} is set by the server")
            if not isinstance(value, (str, int, float)) or isinstance(value, bool) or len(str(value)) > MAX_VALUE:
                raise PlaceError(f"params.{name}: a text of at most {MAX_VALUE} characters")
        if not 5 <= self.ring_timeout <= 600:
            raise PlaceError("ring_timeout: 5 to 600 seconds")
        return self


def outbound_twiml(public_base: str, request: OutboundRequest, call_id: str) -> str:
    """`<Connect><Stream>` to our /media with the call's parameters, then our fallback."""
    response = VoiceResponse()
    stream = response.connect().stream(
        url=stream_url_for(public_base), status_callback=f"{public_base}/twiml/status", status_callback_method="POST"
    )
    fixed = {"From": request.from_, "To": request.to, P_DIRECTION: "outbound", P_CALL_ID: call_id}
    if request.amd:
        fixed[P_AMD] = "1"
    if request.flow:
        fixed[P_FLOW] = request.flow
    for name, value in {**fixed, **{k: str(v) for k, v in request.params.items()}}.items():
        stream.parameter(name=name, value=value)
    response.redirect(f"{public_base}/twiml/fallback", method="POST")
    doc = str(response)
    if len(doc) > MAX_TWIML:
        raise PlaceError(f"the call's TwiML would be {len(doc)} characters (Twilio takes {MAX_TWIML}): fewer or shorter params")
    return doc


def create_arguments(public_base: str, request: OutboundRequest, call_id: str) -> dict:
    """The keyword arguments of `calls.create` (twilio 9.13)."""
    base = public_base.rstrip("/")
    args = dict(
        to=request.to,
        from_=request.from_,
        twiml=outbound_twiml(base, request, call_id),
        status_callback=f"{base}/outbound/status",
        status_callback_event=list(STATUS_EVENTS),
        status_callback_method="POST",
        timeout=request.ring_timeout,
    )
    if request.amd:
        # DetectMessageEnd: the verdict for a machine comes at the end of its greeting (the beep),
        # which is when a voicemail message should start. Async: the stream runs meanwhile.
        args.update(
            machine_detection="DetectMessageEnd",
            async_amd="true",
            async_amd_status_callback=f"{base}/outbound/amd",
            async_amd_status_callback_method="POST",
        )
    return args


def new_call_id() -> str:
    return "ob-" + secrets.token_hex(8)


class Placer:
    """Places calls and writes what it did to the store."""

    def __init__(self, rest: TwilioRest, public_base: str, store: CallStore) -> None:
        if not public_base.startswith(("https://", "http://")):
            raise PlaceError("the server's public URL (IVR_PUBLIC_URL, https://…) is needed: Twilio must reach it")
        self.rest = rest
        self.public_base = public_base.rstrip("/")
        self.store = store

    async def aclose(self) -> None:
        """Close the REST client's HTTP session (at the end of a command's event loop)."""
        http = getattr(self.rest.client(), "http_client", None)
        if http is not None and hasattr(http, "close"):
            await http.close()

    async def place(self, request: OutboundRequest, call_id: str | None = None,
                    turn: Callable[[], Awaitable[bool]] | None = None) -> dict:
        """Returns {"id", "sid", "status"}. Raises PlaceError (bad request), NotPlaced (Twilio
        said no) or TwilioRestError-like errors (unknown: the call may or may not exist).

        `turn`, if given, is awaited just before the request goes out (the rate at which Twilio
        sees calls arrive is what counts): False, and the call is not placed (`RateLimited`)."""
        request.check()
        call_id = call_id or new_call_id()
        args = create_arguments(self.public_base, request, call_id)
        common = {"id": call_id, "to": request.to, "from": request.from_, "flow": request.flow,
                  "campaign": request.campaign, "params": dict(request.params)}
        # Written before the request: if we die before the answer, a resumed campaign knows the
        # number may have been called and does not call it twice.
        await self.store.add({"kind": "placing", **common})
        if turn is not None and not await turn():
            await self.store.add({"kind": "error", "id": call_id, "error": "rate limited", "not_placed": True})
            raise RateLimited("rate limited")
        try:
            call = await self.rest.client().calls.create_async(**args)
        except Exception as exc:
            from twilio.base.exceptions import TwilioRestException

            refused = isinstance(exc, TwilioRestException)
            detail = f"{getattr(exc, 'code', '') or ''} {getattr(exc, 'msg', '') or exc}".strip()
            await self.store.add({"kind": "error", "id": call_id, "error": detail, "not_placed": refused})
            metrics.PLACED.labels("refused" if refused else "error").inc()
            log.warning("call %s to %s not placed: %s", call_id, mask_number(request.to), detail)
            raise (NotPlaced(detail) if refused else RuntimeError(detail)) from exc
        await self.store.add({"kind": "placed", "sid": call.sid, "status": call.status or "queued", **common})
        metrics.PLACED.labels("placed").inc()
        log.info("call %s placed to %s: %s", call_id, mask_number(request.to), call.sid)
        return {"id": call_id, "sid": call.sid, "status": call.status or "queued"}
