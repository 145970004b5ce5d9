"""The routes of the carriers beyond Twilio: their media streams, answer documents and checks.

Each carrier's stream lands on its own WebSocket route (`/media/telnyx`, `/media/plivo`,
`/media/exotel`, `/media/vonage`, `/media/asterisk`) or, for Asterisk's AudioSocket, on a TCP
port; all of them run the server's one stream loop (ivr.server) with the carrier's codec
(ivr.telephony.carriers). The carriers that fetch an answer document get it here, signed
requests only: Telnyx TeXML at `/telnyx/texml`, Plivo XML at `/plivo/answer` (and at
`/plivo/transfer`, where a transfer through Plivo's API sends the caller), a Vonage NCCO at
`/vonage/answer`. Exotel's Voicebot applet and Asterisk's dialplan are configured by hand
(infra/carriers.md, infra/asterisk/).

Who may open a stream: a carrier whose secret is set is checked (Telnyx's stream token, Plivo's
and Vonage's per-call token minted by their signed answer, Exotel's and Asterisk's Basic
credentials). With no secret of its own, a carrier's route is open only while the server checks
nothing at all (no TWILIO_AUTH_TOKEN either: a development server, which start-up warns about);
once any secret is set, a carrier without one is refused, so an operator who locked the front
door has not left a side door open.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ivr import metrics
from ivr.config import Settings
from ivr.session import Transport
from ivr.telephony import asterisk_dialplan, asterisk_ws, audiosocket, exotel, json_stream, plivo, plivo_control, stream_token, telnyx, vonage
from ivr.telephony.carriers import CARRIERS
from ivr.telephony.twilio import Start
from ivr.telephony.twiml import TRANSFER_SAY

log = logging.getLogger("ivr.carriers")

#: What a transfer may dial: an E.164 number or a SIP URI (nothing that could break the XML).
TRANSFER_TARGET = re.compile(r"\+?[0-9]{3,15}|sips?:[A-Za-z0-9._~%!$&'*+,;=:@-]{3,200}")

#: Events a carrier sends that the engine does not act on: logged.
CARRIER_NOTICES = (json_stream.Notice, asterisk_ws.FlowControl, asterisk_ws.Notice, audiosocket.AudioSocketError,
                   vonage.Cleared, vonage.Notice)

#: The setting that holds each carrier's secret, for messages.
SECRET_NAMES = {
    "telnyx": "IVR_TELNYX_STREAM_TOKEN", "plivo": "PLIVO_AUTH_TOKEN", "vonage": "VONAGE_SIGNATURE_SECRET",
    "exotel": "IVR_EXOTEL_BASIC_AUTH", "asterisk-ws": "IVR_ASTERISK_BASIC_AUTH",
}


def describe_notice(event) -> str:
    if isinstance(event, json_stream.Notice):
        return f"{event.event} {orjson.dumps(dict(event.body)).decode()[:200]}"
    if isinstance(event, asterisk_ws.FlowControl):
        return "MEDIA_XOFF (its queue of our audio is full)" if event.paused else "MEDIA_XON"
    if isinstance(event, audiosocket.AudioSocketError):
        return f"error 0x{event.code:02x}: {event.description}"
    return type(event).__name__ if not hasattr(event, "event") else str(event.event)


def _secret(settings: Settings, carrier: str) -> str:
    return {
        "telnyx": settings.telnyx_stream_token, "plivo": settings.plivo_auth_token,
        "vonage": settings.vonage_signature_secret, "exotel": settings.exotel_basic_auth,
        "asterisk-ws": settings.asterisk_basic_auth,
    }.get(carrier, "")


def _anything_checked(settings: Settings) -> bool:
    return bool(settings.twilio_auth_token or any(_secret(settings, c) for c in SECRET_NAMES))


def upgrade_refusal(settings: Settings, carrier: str, websocket: WebSocket) -> str | None:
    """Why a carrier's WebSocket upgrade is refused, or None. (Per-call tokens wait for `start`.)"""
    secret = _secret(settings, carrier)
    if not secret:
        if _anything_checked(settings):
            return f"{SECRET_NAMES[carrier]} is not set while other carriers are checked"
        return None
    if carrier == "telnyx":
        import hmac

        given = websocket.headers.get(telnyx.STREAM_TOKEN_HEADER, "")
        return None if given and hmac.compare_digest(given, secret) else f"{telnyx.STREAM_TOKEN_HEADER} missing or wrong"
    if carrier in ("exotel", "asterisk-ws"):
        ok = exotel.basic_auth_ok(secret, websocket.headers.get("authorization"))
        return None if ok else "Basic credentials missing or wrong"
    return None


def stream_refusal(settings: Settings, carrier: str, start: Start, parser) -> str | None:
    """Why a stream's `start` is refused (Plivo's and Vonage's per-call token), or None."""
    if carrier == "plivo" and settings.plivo_auth_token:
        token = start.custom_parameters.get("ivr_token", "")
        return None if stream_token.valid(settings.plivo_auth_token, start.call_sid, token) else "no valid ivr_token in extra_headers"
    if carrier == "vonage" and settings.vonage_signature_secret:
        return None if stream_token.valid(settings.vonage_signature_secret, start.call_sid, parser.token) else "no valid ivr_token header"
    return None


def install(state, run_stream: Callable[..., Awaitable[None]]) -> list:
    """The carriers' routes, for the app (ivr.server passes its stream loop)."""
    settings: Settings = state.settings

    def media_route(name: str):
        carrier = CARRIERS[name]

        async def media(websocket: WebSocket) -> None:
            refused = upgrade_refusal(settings, name, websocket)
            if refused:
                metrics.SIGNATURE_FAILURES.labels(name).inc()
                log.warning("refused %s media stream: %s", name, refused)
                await websocket.close(code=1008)
                return
            # chan_websocket asks for the "media" subprotocol; the others name none.
            offered = websocket.scope.get("subprotocols") or []
            await websocket.accept(subprotocol="media" if "media" in offered else None)
            task = asyncio.current_task()
            state.calls.add(task)
            try:
                await run_stream(state, websocket, carrier)
            finally:
                state.calls.discard(task)

        return WebSocketRoute(carrier.path, media)

    async def telnyx_texml(request: Request) -> Response:
        body = await request.body()
        if settings.telnyx_public_key and not telnyx.verify_webhook(settings.telnyx_public_key, request.headers, body):
            return _forbidden("telnyx", "Telnyx signature missing, stale or not valid")
        form = await request.form()
        url = state.public.base(request).replace("https://", "wss://").replace("http://", "ws://") + "/media/telnyx"
        params = {"From": str(form.get("From", "")), "To": str(form.get("To", ""))}
        return Response(telnyx.answer(url, params), media_type="application/xml")

    def plivo_refusal(request: Request, form: dict[str, str]) -> Response | None:
        """403 for a request Plivo did not sign (V3), when PLIVO_AUTH_TOKEN is set; else None."""
        if not settings.plivo_auth_token:
            return None
        url = state.public.webhook_url(request)
        params = form if request.method == "POST" else {}
        if plivo.verify_webhook(settings.plivo_auth_token, request.method, url, params,
                                request.headers.get(plivo.NONCE_HEADER, ""), request.headers.get(plivo.SIGNATURE_HEADER, "")):
            return None
        return _forbidden("plivo", "X-Plivo-Signature-V3 missing or not valid")

    async def plivo_answer(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        if (refused := plivo_refusal(request, form)) is not None:
            return refused
        call_id = form.get("CallUUID") or request.query_params.get("CallUUID", "")
        headers = {"From": form.get("From", ""), "To": form.get("To", "")}
        if settings.plivo_auth_token:
            headers["ivr_token"] = stream_token.mint(settings.plivo_auth_token, call_id)
        url = state.public.base(request).replace("https://", "wss://").replace("http://", "ws://") + "/media/plivo"
        # Plivo's extraHeaders allow letters and digits only in values: numbers lose their "+".
        clean = {k: "".join(c for c in v if c.isalnum()) for k, v in headers.items() if v}
        return Response(plivo.answer(url, clean), media_type="application/xml")

    async def plivo_transfer(request: Request) -> Response:
        """The Plivo XML a transfer sends the caller to (ivr.telephony.plivo_control's `aleg_url`)."""
        form = {k: str(v) for k, v in (await request.form()).items()}
        if (refused := plivo_refusal(request, form)) is not None:
            return refused
        target = request.query_params.get("to", "")
        if not TRANSFER_TARGET.fullmatch(target):
            return PlainTextResponse("to: a phone number or a sip: URI\n", status_code=400)
        doc = plivo.transfer(target, request.query_params.get("summary", ""), say=TRANSFER_SAY)
        return Response(doc, media_type="application/xml")

    async def vonage_answer(request: Request) -> Response:
        body = await request.body()
        if settings.vonage_signature_secret and not vonage.verify_webhook(
            settings.vonage_signature_secret, request.headers.get("authorization"), body
        ):
            return _forbidden("vonage", "Vonage's signed-webhook JWT missing or not valid")
        data = dict(request.query_params)
        if body and request.headers.get("content-type", "").startswith("application/json"):
            try:
                data.update({k: str(v) for k, v in orjson.loads(body).items() if not isinstance(v, (dict, list))})
            except (orjson.JSONDecodeError, AttributeError):
                return PlainTextResponse("answer body is not a JSON object\n", status_code=400)
        call_uuid = data.get("uuid", "")
        headers = {"call_uuid": call_uuid, "from": data.get("from", ""), "to": data.get("to", "")}
        if settings.vonage_signature_secret:
            headers["ivr_token"] = stream_token.mint(settings.vonage_signature_secret, call_uuid)
        url = state.public.base(request).replace("https://", "wss://").replace("http://", "ws://") + "/media/vonage"
        return Response(vonage.answer(url, headers), media_type="application/json")

    async def asterisk_outcome(request: Request) -> Response:
        """How the call goes on, for a dialplan without ARI (ivr.telephony.asterisk_dialplan):
        taken once, as /twiml/fallback takes Twilio's."""
        secret = settings.asterisk_basic_auth
        if secret and not exotel.basic_auth_ok(secret, request.headers.get("authorization")):
            return _forbidden("asterisk-ws", "Basic credentials missing or wrong")
        key = asterisk_dialplan.outcome_key(request.path_params["call_id"])
        planned = await state.shared.take_outcome(key)
        return PlainTextResponse(planned or asterisk_dialplan.NONE)

    return [
        *(media_route(name) for name in ("telnyx", "plivo", "exotel", "vonage", "asterisk-ws")),
        Route(asterisk_dialplan.PATH, asterisk_outcome, methods=["GET"]),
        Route("/telnyx/texml", telnyx_texml, methods=["POST"]),
        Route("/plivo/answer", plivo_answer, methods=["GET", "POST"]),
        Route(plivo_control.TRANSFER_PATH, plivo_transfer, methods=["GET", "POST"]),
        Route("/vonage/answer", vonage_answer, methods=["GET", "POST"]),
    ]


def _forbidden(carrier: str, why: str) -> Response:
    metrics.SIGNATURE_FAILURES.labels(carrier).inc()
    log.warning("refused %s webhook: %s", carrier, why)
    return PlainTextResponse(f"{why}\n", status_code=403)


class TcpTransport(Transport):
    __slots__ = ("_writer",)

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def send(self, message: str | bytes) -> None:
        self._writer.write(message)
        await self._writer.drain()

    async def close(self, reason: str = "") -> None:
        if not self._writer.is_closing():
            self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


class AudioSocketServer:
    """Asterisk's AudioSocket() calls on a TCP port beside the HTTP server.

    AudioSocket carries no credentials: listen only where Asterisk alone can reach (a private
    network, or 127.0.0.1 with Asterisk on the same host)."""

    def __init__(self, state, run_stream: Callable[..., Awaitable[None]]) -> None:
        self.state = state
        self.run_stream = run_stream
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._connection, host, port)
        log.info("AudioSocket calls on tcp://%s:%d (no credentials: keep it on a private network)", host, port)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def receive() -> bytes | None:
            try:
                data = await reader.read(65536)
            except OSError:
                return None
            return data or None

        task = asyncio.current_task()
        self.state.calls.add(task)
        try:
            await self.run_stream(self.state, None, CARRIERS["audiosocket"], transport=TcpTransport(writer),
                                  receive=receive, key=f"as-{id(writer):x}")
        finally:
            self.state.calls.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
