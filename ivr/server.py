"""The Starlette app: TwiML webhooks, the Media Stream endpoint, health and metrics.

Thin on purpose: it checks signatures, adapts the WebSocket to the sans-I/O Twilio codec and hands
events to one call handler per stream (see ivr.session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ivr import metrics
from ivr.config import Settings
from ivr.heap import freeze_startup_objects
from ivr.idle import IdleWatch
from ivr.logs import CallLog
from ivr.carrier_routes import CARRIER_NOTICES, AudioSocketServer, describe_notice, stream_refusal
from ivr.carrier_routes import install as install_carriers
from ivr.session import HandlerFactory, Line, Transport, WebSocketTransport
from ivr.state import IvrState
from ivr.state import signed_form as _signed_form
from ivr.state import state_of as _state
from ivr.telephony import asterisk_dialplan, twiml
from ivr.telephony.carriers import CARRIERS, Carrier
from ivr.telephony.twilio import MAX_GAP_MS, DroppedMedia, Media, ProtocolError, Start, Stop
from ivr.web import install as install_web
from ivr.outbound.routes import install as install_outbound

log = logging.getLogger("ivr.server")

TWIML = "application/xml"
#: Twilio's statuses of a call that is over.
CALL_OVER = ("completed", "busy", "no-answer", "failed", "canceled")
MAX_EARLY_MESSAGES = 16
#: With every line taken, a started stream silent this long (or half IVR_STREAM_IDLE_SECONDS,
#: if less) gives its line to a new call.
EVICT_AFTER_SECONDS = 2.0


async def voice(request: Request) -> Response:
    form = await _signed_form(request, "voice")
    if isinstance(form, Response):
        return form
    state = _state(request)
    call_sid = form.get("CallSid", "")
    if not await state.admission.reserve(call_sid) and not (
        not state.admission.draining and _free_a_line(state) and await state.admission.reserve(call_sid)
    ):
        metrics.WEBHOOKS.labels("voice", "busy").inc()
        log.warning(
            "call %s answered busy: %s",
            call_sid,
            "draining" if state.admission.draining else f"at IVR_MAX_CALLS={state.settings.max_calls}",
        )
        return Response(twiml.busy(), media_type=TWIML)
    metrics.WEBHOOKS.labels("voice", "stream").inc()
    extra = {k: v for k, v in form.items() if k.startswith("SipHeader_X-")}
    body = twiml.answer(
        state.public.base(request),
        caller=form.get("From", ""),
        callee=form.get("To", ""),
        call_sid=call_sid,
        extra=extra,
    )
    return Response(body, media_type=TWIML)


async def status(request: Request) -> Response:
    form = await _signed_form(request, "status")
    if isinstance(form, Response):
        return form
    metrics.WEBHOOKS.labels("status", "ok").inc()
    if form.get("CallStatus") in CALL_OVER:
        await _state(request).admission.ended(form.get("CallSid", ""))
    log.info(
        "status callback: call %s stream %s %s",
        form.get("CallSid", "?"),
        form.get("StreamSid", "-"),
        form.get("StreamEvent") or form.get("CallStatus") or "?",
    )
    return Response(status_code=204)


async def fallback(request: Request) -> Response:
    form = await _signed_form(request, "fallback")
    if isinstance(form, Response):
        return form
    metrics.WEBHOOKS.labels("fallback", "ok").inc()
    call_sid = form.get("CallSid", "?")
    planned = await _state(request).shared.take_outcome(call_sid)
    if planned is not None:
        return Response(planned, media_type=TWIML)
    log.warning("call %s: stream ended without the bot ending the call; playing the fallback", call_sid)
    return Response(twiml.fallback(), media_type=TWIML)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


async def readyz(request: Request) -> Response:
    state = _state(request)
    if not state.ready or state.admission.draining:
        return PlainTextResponse("not ready\n", status_code=503)
    # A cloud provider down with no fallback installed: calls are better taken elsewhere.
    providers = getattr(state.handler_factory, "providers", None)
    reasons = providers.unready() if hasattr(providers, "unready") else []
    if reasons:
        return PlainTextResponse("not ready: " + "; ".join(reasons) + "\n", status_code=503)
    # Still ready without Redis: calls work, only what crosses pods is this pod's own.
    degraded = state.shared.degraded()
    return PlainTextResponse(f"ready (degraded: {degraded})\n" if degraded else "ready\n")


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def media(websocket: WebSocket) -> None:
    state = _state(websocket)
    url = state.public.stream_url(websocket)
    # The web phone has no Twilio signature: it passes only on the web phone's own terms.
    if not state.signatures.valid(websocket, url) and not (state.web is not None and state.web.allows_media(websocket)):
        metrics.SIGNATURE_FAILURES.labels("media").inc()
        log.warning("refused media stream: X-Twilio-Signature missing or not valid for %s", url)
        await _deny(websocket)
        return
    await websocket.accept()
    task = asyncio.current_task()
    if task is not None:
        state.calls.add(task)
    try:
        await _run_stream(state, websocket)
    finally:
        if task is not None:
            state.calls.discard(task)


async def _deny(websocket: WebSocket) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(PlainTextResponse("invalid Twilio signature\n", status_code=403))
    else:  # closing before accept makes the server answer the upgrade with 403
        await websocket.close(code=1008)


async def _receive_ws(websocket: WebSocket) -> str | bytes | None:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        return None
    raw = message.get("text")
    return raw if raw is not None else (message.get("bytes") or b"")


async def _run_stream(state: IvrState, websocket: WebSocket | None, carrier: Carrier = CARRIERS["twilio"],
                      transport: Transport | None = None, receive=None, key: str = "") -> None:
    """One call's stream, whichever carrier: raw messages in, events to the call's handler.

    A WebSocket carrier passes its socket; AudioSocket passes its TCP `transport` and a
    `receive()` that returns the next bytes read (None at the end)."""
    parser = carrier.parser(state.settings.max_message_bytes)
    # AudioSocket's parser takes a byte stream and returns a list; the others one event a message.
    byte_stream = hasattr(parser, "feed")
    decode = parser.feed if byte_stream else parser.parse
    receive = receive or (lambda: _receive_ws(websocket))
    transport = transport or WebSocketTransport(websocket)
    capture_dir = state.settings.capture_dir if carrier.name == "twilio" else ""
    calllog = CallLog(log, transcripts=state.settings.log_transcripts)
    key = key or f"ws-{id(websocket):x}"
    line: Line | None = None
    handler = None
    admitted = False
    t0 = time.monotonic()
    end_reason = "hangup"
    early: list[tuple[str | bytes, int]] = []  # messages before `start`, for the capture
    backlog: deque = deque()
    task = asyncio.current_task()
    assert task is not None
    watch = IdleWatch(state.settings.stream_idle_seconds, task)
    state.watches[key] = watch
    now = t0
    try:
        while True:
            if watch.expired:  # its cancellation was swallowed inside the handler
                task.uncancel()
                break
            if backlog:
                event = backlog.popleft()
            else:
                raw = await receive()
                if raw is None:
                    end_reason = "disconnect"
                    break
                now = time.monotonic()
                t_ms = int((now - t0) * 1000)
                if line is not None:
                    line.capture(raw, t_ms)
                elif len(early) < MAX_EARLY_MESSAGES:
                    early.append((raw, t_ms))
                try:
                    decoded = decode(raw)
                except ProtocolError as exc:
                    metrics.PROTOCOL_ERRORS.labels(exc.kind).inc()
                    calllog.protocol_error(exc)
                    if not byte_stream:
                        continue
                    end_reason = "protocol"  # a byte stream's framing is lost after a bad header
                    break
                if type(decoded) is list:
                    if not decoded:
                        continue
                    backlog.extend(decoded[1:])  # several AudioSocket messages in one read
                    decoded = decoded[0]
                event = decoded
            if isinstance(event, Start):
                refused = stream_refusal(state.settings, carrier.name, event, parser)
                if refused:
                    metrics.SIGNATURE_FAILURES.labels(carrier.name).inc()
                    calllog.warning("refused %s stream: %s", carrier.name, refused)
                    end_reason = "refused"
                    break
                calllog.bind(event.call_sid, event.stream_sid)
                if not await _enter(state, key, event.call_sid):
                    metrics.CALLS.labels("refused").inc()
                    if state.admission.draining:
                        calllog.warning("refused: the server is draining (shutting down) and takes no new calls")
                    else:
                        calllog.warning("refused: no free line (IVR_MAX_CALLS=%d)", state.settings.max_calls)
                    end_reason = "refused"
                    break
                admitted = True
                watch.start(now)
                metrics.ACTIVE_CALLS.inc()
                metrics.CALLS.labels("accepted").inc()
                line = Line(transport, event, calllog, capture_dir, t0, writer=carrier.writer(event, parser),
                            has_clear=carrier.has_clear, has_marks=carrier.has_marks, carrier=carrier.name,
                            control_id=carrier.control_id(event))
                # How the call goes on is kept for what follows the stream: Twilio's
                # /twiml/fallback, an Asterisk dialplan's CURL() of /asterisk/outcome.
                if carrier.name == "twilio":
                    line.before_close = _outcome_saver(state, line, line.start.call_sid, _twiml_outcome)
                elif carrier.name in ("audiosocket", "asterisk-ws"):
                    line.before_close = _outcome_saver(state, line, asterisk_dialplan.outcome_key(line.control_id),
                                                       asterisk_dialplan.outcome)
                if hasattr(parser, "expect_marks") and hasattr(line.writer, "pending_marks"):
                    parser.expect_marks(line.writer.pending_marks)
                if carrier.max_lead_ms is not None:
                    line.max_lead_ms = carrier.max_lead_ms
                for early_raw, early_ms in early:
                    line.capture(early_raw, early_ms)
                state.index_call(line)
                handler = state.handler_factory(line)
                state.handlers[key] = handler
                calllog.info(
                    "call started: from %s to %s",
                    calllog.mask(event.custom_parameters.get("From", "")),
                    calllog.mask(event.custom_parameters.get("To", "")),
                )
            elif isinstance(event, DroppedMedia):
                metrics.MEDIA_ANOMALIES.labels(event.reason).inc()
                continue
            elif isinstance(event, CARRIER_NOTICES):
                calllog.info("%s says: %s", carrier.name, describe_notice(event))
                continue
            elif handler is None:
                continue  # `connected`: nothing to do yet
            if handler is not None:
                if isinstance(event, Media):
                    watch.last_media = now
                    metrics.FRAMES_IN.inc()
                    if event.gap_bytes:
                        metrics.MEDIA_ANOMALIES.labels("lost").inc()
                    elif event.skipped_ms:
                        metrics.MEDIA_ANOMALIES.labels("long_gap").inc()
                        calllog.anomaly(
                            "long_gap",
                            "media chunk %d jumps %d ms past the audio before it: not filled with silence (lost frames are filled up to %d ms)",
                            event.chunk, event.skipped_ms, MAX_GAP_MS,
                        )
                try:
                    await handler.on_event(event)
                except Exception:
                    calllog.exception("call handler failed on %s; the call goes on", type(event).__name__)
            if isinstance(event, Stop):
                end_reason = "stop"
                break
    except WebSocketDisconnect:
        end_reason = "disconnect"
    except asyncio.CancelledError:
        if not watch.claimed():
            raise
    finally:
        watch.close()
        state.watches.pop(key, None)
        if watch.expired:
            end_reason = watch.reason
            _report_idle(watch, calllog)
        state.handlers.pop(key, None)
        if handler is not None:
            try:
                await handler.close(end_reason)
            except Exception:
                calllog.exception("call handler failed while closing")
        if line is not None:
            line.close()
            if line.before_close is not None:
                await line.before_close()
        if admitted:
            metrics.ACTIVE_CALLS.dec()
            bot_end = line is not None and ("transfer" if line.transfer_to else "bot" if line.ended_by_bot else "")
            metrics.CALL_ENDINGS.labels(bot_end or ("caller" if end_reason == "stop" else end_reason)).inc()
            metrics.CALL_DURATION.observe(time.monotonic() - t0)
        state.admission.leave(key)
        if parser.start is not None:
            calllog.info(
                "call ended (%s) after %.1f s: %d sequence gaps, %d lost chunks, %d jumps not filled",
                end_reason,
                time.monotonic() - t0,
                getattr(parser, "sequence_gaps", 0),
                getattr(parser, "lost_chunks", 0),
                getattr(parser, "long_gaps", 0),
            )
    with contextlib.suppress(Exception):
        await transport.close(reason=CLOSE_REASONS.get(end_reason, ""))


#: The close reason of streams the server ends for silence (see ivr.idle).
CLOSE_REASONS = {
    "no_start": "no start message in time",
    "no_media": "no audio in time",
    "evicted": "no audio, and the line was needed",
}


def _report_idle(watch: IdleWatch, calllog: CallLog) -> None:
    metrics.STREAMS_TIMED_OUT.labels(watch.reason).inc()
    if watch.reason == "no_start":
        log.info("closed a media socket that sent no start within %.0f s (IVR_STREAM_IDLE_SECONDS)", watch.seconds)
    elif watch.reason == "evicted":
        calllog.warning(
            "ended: no audio for %.1f s while every line is taken; its line goes to a new call",
            watch.idle_for(time.monotonic()),
        )
    else:
        calllog.warning("ended: no audio from the caller for %.0f s (IVR_STREAM_IDLE_SECONDS)", watch.seconds)


async def _enter(state: IvrState, key: str, call_sid: str) -> bool:
    """Admit a stream, ending a silent one for it if every line is taken (see _free_a_line)."""
    if await state.admission.enter(key, call_sid):
        return True
    return not state.admission.draining and _free_a_line(state) and await state.admission.enter(key, call_sid)


def _free_a_line(state: IvrState) -> bool:
    """Every line is taken: end the started stream silent the longest, if it has been silent
    for EVICT_AFTER_SECONDS (a live one sends audio every 20 ms), so that streams that went
    quiet never make a real caller hear "busy". True if a line was freed."""
    now = time.monotonic()
    after = min(EVICT_AFTER_SECONDS, state.settings.stream_idle_seconds / 2)
    quiet = [(w.last_media, key) for key, w in state.watches.items()
             if w.started and not w.expired and w.idle_for(now) >= after]
    if not quiet:
        return False
    key = min(quiet)[1]
    state.watches[key].expire("evicted")
    state.admission.leave(key)  # at once: its task ends on the loop's next turn
    return True


def _twiml_outcome(transfer, ended_by_bot: bool) -> str | None:
    return twiml.transfer(transfer.target, transfer.summary) if transfer else twiml.hangup() if ended_by_bot else None


def _outcome_saver(state: IvrState, line: Line, key: str, render):
    """How the call goes on after a stream the bot ended (hang up, or its transfer), saved once
    under `key` for whoever asks next (/twiml/fallback on whichever pod Twilio asks; an Asterisk
    dialplan): before our side closes the stream, or when the stream has ended otherwise.
    `render(transfer_to, ended_by_bot)` writes it in the asker's form."""
    saved = False

    async def save() -> None:
        nonlocal saved
        doc = render(line.transfer_to, line.ended_by_bot)
        if doc is None or saved:
            return
        saved = True
        await state.shared.put_outcome(key, doc)

    return save


async def _warm_up(state: IvrState, startup) -> None:
    try:
        await startup()
    except Exception:
        log.exception("loading the engines failed: /readyz stays false; calls try again on first use")
        return
    freeze_startup_objects()
    state.ready = True
    log.info("ready for calls")


def create_app(settings: Settings | None = None, handler_factory: HandlerFactory | None = None) -> Starlette:
    """The app. Without a handler factory, calls go to the conversation engine with the
    providers the settings choose (loaded at start-up, before /readyz turns true)."""
    settings = settings or Settings.from_env()
    if handler_factory is None:
        from ivr.call import CallFactory

        handler_factory = CallFactory.from_settings(settings)
    state = IvrState(settings, handler_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not state.signatures.enabled:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked; anyone who can "
                "reach this server can open calls. Set it before exposing the server."
            )
        if not settings.public_url:
            log.info("IVR_PUBLIC_URL is not set: public URLs are taken from each request's Host header")
        await state.shared.start()
        startup = getattr(state.handler_factory, "startup", None)
        # Engines load after the port opens: /healthz answers at once, /readyz once they are in,
        # and a call that comes early is taken (it waits for the engines) rather than refused.
        warming = None
        if startup is None:
            state.ready = True
        else:
            warming = asyncio.create_task(_warm_up(state, startup), name="warm-up")
        loop_lag = metrics.LoopLagMonitor().start()
        audiosocket = None
        if settings.audiosocket_port:
            audiosocket = AudioSocketServer(state, _run_stream)
            await audiosocket.start(settings.host, settings.audiosocket_port)
        yield
        if audiosocket is not None:
            await audiosocket.stop()
        loop_lag.stop()
        if warming is not None:
            warming.cancel()
        state.ready = False
        await state.shared.aclose()

    app = Starlette(
        routes=[
            Route("/twiml/voice", voice, methods=["POST"]),
            Route("/twiml/status", status, methods=["POST"]),
            Route("/twiml/fallback", fallback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            WebSocketRoute("/media", media),
            *install_carriers(state, _run_stream),
            *install_web(state),
            *install_outbound(state),
        ],
        lifespan=lifespan,
    )
    app.state.ivr = state
    return app
