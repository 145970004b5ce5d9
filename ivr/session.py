"""What a call handler sees of the telephone line, and the handler interface itself.

The server creates one `Line` per stream when `start` arrives and one handler through the
configured factory; the handler receives every later event in order and talks back through the
line (media, mark, clear, hang up).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Awaitable, Callable, NamedTuple, Protocol, Sequence

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from ivr import metrics
from ivr.audio import FRAME_BYTES, Framer, ulaw_silence
from ivr.logs import CallLog
from ivr.telephony.twilio import Dtmf, Event, Mark, Media, Start, StreamWriter

log = logging.getLogger("ivr.session")


class Transfer(NamedTuple):
    """Where the bot sent the caller, and the summary it gave."""

    target: str
    summary: str = ""


class Line:
    """The outbound side of one Media Stream, plus the call's identity and optional capture."""

    #: What the carrier can do (the engine asks, never which carrier it is): Twilio drops its
    #: queued audio on `clear` and echoes marks (IVR_MARKS=off says a compatible one does not).
    has_clear = True
    has_marks = True

    def __init__(self, websocket: WebSocket | "Transport", start: Start, calllog: CallLog, capture_dir: str, t0: float,
                 writer=None, has_clear: bool = True, has_marks: bool = True, carrier: str = "twilio",
                 control_id: str = "") -> None:
        self.start = start
        #: Which carrier's stream this is: it picks the call control (ivr.telephony.control),
        #: and `control_id` is the id that call control knows the call by.
        self.carrier = carrier
        self.control_id = control_id or start.call_sid
        self.log = calllog
        #: Twilio's by default; another carrier's writer has the same media/mark/clear methods
        #: (ivr.telephony.carriers), returning text or bytes, or None for audio it gathers.
        self.writer = writer or StreamWriter(start.stream_sid)
        self.has_clear = has_clear
        self.has_marks = has_marks
        self._flush = getattr(self.writer, "flush", None)
        #: The most 20 ms frames one `media` message may carry: more than one only where the
        #: carrier documents outbound audio of any size (the writer says; a fixed-frame one, or
        #: one that gathers frames itself, takes them one at a time).
        self.max_frames_per_message = max(1, int(getattr(self.writer, "max_frames_per_message", 1)))
        self.closed = False
        #: The caller hung up (or the socket died) while we were sending: later sends are dropped.
        self.gone = False
        #: Set by the call engine: the bot ended the call, or handed it on. On Twilio without
        #: call control the stream's end runs /twiml/fallback, which serves them.
        self.ended_by_bot = False
        self.transfer_to: Transfer | None = None
        #: Set by the server: run before our side closes the stream (Twilio may ask any pod
        #: for /twiml/fallback the moment it closes).
        self.before_close: Callable[[], Awaitable[None]] | None = None
        self._ws = websocket if isinstance(websocket, Transport) else WebSocketTransport(websocket)
        self._t0 = t0
        self._capture = None
        if capture_dir:
            from ivr.harness.capture import CaptureWriter

            self._capture = CaptureWriter.open(capture_dir, start.call_sid, start.stream_sid)

    @property
    def parameters(self):
        return self.start.custom_parameters

    def capture(self, raw: str | bytes, t_ms: int) -> None:
        if self._capture is not None:
            self._capture.write(t_ms, raw)

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Frames of the bot's audio, in order, as one message (or none while a writer gathers).

        One message, not one per frame: a caller that splits a batch here would await between
        its sends, and a cut in between would find frames of the turn after its clear."""
        if not 0 < len(frames) <= self.max_frames_per_message:
            raise ValueError(f"{len(frames)} frames for one message; this carrier takes 1 to {self.max_frames_per_message}")
        message = self.writer.media(frames[0] if len(frames) == 1 else b"".join(frames))
        metrics.FRAMES_OUT.inc(len(frames))
        if message is not None:
            await self._send(message)

    async def send_mark(self, name: str) -> None:
        if self._flush is not None:  # audio a writer gathers goes out before the mark after it
            pending = self._flush()
            if pending is not None:
                await self._send(pending)
        await self._send(self.writer.mark(name))

    async def send_clear(self) -> None:
        await self._send(self.writer.clear())

    async def _send(self, message: str | bytes) -> None:
        if self._capture is not None:
            self._capture_out(message)
        if self.gone:
            return
        try:
            await self._ws.send(message)
        except Exception as exc:
            if not (is_disconnect(exc) or isinstance(exc, WebSocketDisconnected)):
                raise
            # The caller hung up while the bot was talking: a normal end of a call, not a
            # failure. The stream's reader sees the close next and ends the call.
            if not self.closed:
                self.log.info("the caller hung up while the bot was speaking")
            self.gone = True

    def _capture_out(self, text: str) -> None:
        # What we sent, on the capture's clock: the call viewer rebuilds playback from it.
        self._capture.write_out((time.monotonic() - self._t0) * 1000, text)

    @property
    def capturing(self) -> bool:
        return self._capture is not None

    @property
    def capture_name(self) -> str:
        return self._capture.path.name if self._capture is not None else ""

    def capture_event(self, event: dict) -> None:
        """Note a call event (ivr.call.events) in the capture, for the call viewer."""
        if self._capture is not None:
            self._capture.write_event((time.monotonic() - self._t0) * 1000, event)

    async def hang_up(self) -> None:
        """End the stream from our side (the call's own hang-up is the call control's business).
        A carrier that hangs up on request (Asterisk) is asked first."""
        await self._end(ask_hang_up=True)

    async def leave(self) -> None:
        """End the stream without asking the carrier to hang up: what follows the stream on its
        side (an answer document, a dialplan) takes the call on."""
        await self._end(ask_hang_up=False)

    async def _end(self, ask_hang_up: bool) -> None:
        if not self.closed:
            self.closed = True
            if self.before_close is not None:
                await self.before_close()
            hangup = getattr(self.writer, "hangup", None) if ask_hang_up else None
            if hangup is not None and not self.gone:
                try:
                    await self._ws.send(hangup())
                except Exception:  # already gone: closing is all that is left
                    pass
            if not self.gone:
                with contextlib.suppress(WebSocketDisconnect, WebSocketDisconnected, OSError):
                    await self._ws.close()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None


class Transport:
    """Where a line's messages go: a WebSocket, or Asterisk's AudioSocket TCP connection."""

    async def send(self, message: str | bytes) -> None:
        raise NotImplementedError

    async def close(self, reason: str = "") -> None:
        """`reason`: why our side ends the stream, for carriers that can say so."""
        raise NotImplementedError


class WebSocketTransport(Transport):
    __slots__ = ("_ws",)

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self._ws.send_text(message)
        else:
            await self._ws.send_bytes(message)

    async def close(self, reason: str = "") -> None:
        await self._ws.close(reason=reason)


def is_disconnect(exc: BaseException) -> bool:
    """A send failed because the caller's side of the stream is gone (it hung up meanwhile)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_disconnect(e) for e in exc.exceptions)
    # A TCP line (AudioSocket) reports the same as a reset or a broken pipe.
    return isinstance(exc, (WebSocketDisconnect, ConnectionError))


class CallHandler(Protocol):
    async def on_event(self, event: Event) -> None: ...

    async def close(self, reason: str) -> None: ...


HandlerFactory = Callable[[Line], CallHandler]


class ListeningHandler:
    """Re-frames the caller's audio into exact 20 ms frames (lost audio as silence) and routes
    the events to hooks a handler overrides: `on_start`, `on_caller_frames`, `on_dtmf`, `on_mark`.

    On its own it only records the call (its log and, with capture on, its messages).
    """

    def __init__(self, line: Line) -> None:
        self.line = line
        self.framer = Framer(FRAME_BYTES)
        self.caller_ms = 0
        self.digits: list[str] = []
        self.marks_played: list[str] = []

    async def on_event(self, event: Event) -> None:
        if isinstance(event, Media):
            if event.gap_bytes:
                await self.on_caller_frames(self.framer.push(ulaw_silence(event.gap_bytes)))
            await self.on_caller_frames(self.framer.push(event.payload))
        elif isinstance(event, Mark):
            self.on_mark(event.name)
        elif isinstance(event, Dtmf):
            self.line.log.caller_pressed(event.digit)
            await self.on_dtmf(event.digit)
        elif isinstance(event, Start):
            await self.on_start()

    async def on_start(self) -> None:
        pass

    async def on_caller_frames(self, frames: list[bytes]) -> None:
        self.caller_ms += 20 * len(frames)

    async def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def on_mark(self, name: str) -> None:
        self.marks_played.append(name)

    async def close(self, reason: str) -> None:
        self.line.log.info("heard %.1f s of caller audio, %d DTMF digits", self.caller_ms / 1000, len(self.digits))
