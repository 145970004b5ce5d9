"""Asterisk's WebSocket media channel (`chan_websocket`), sans I/O: messages <-> call events.

Asterisk 20.16+/21.11+/22.6+/23 can put a call's media on a WebSocket: `Dial(WebSocket/<client>/c(ulaw))`
with a `websocket_client.conf` entry whose `uri` points at ivr's `/media/asterisk`, or ARI's
`externalMedia` with `transport=websocket`. Media travels in BINARY frames (raw codec bytes, for
mu-law 160 bytes every 20 ms); control travels in TEXT frames, either one plain-text line
(`MEDIA_START connection_id:… channel:… format:ulaw optimal_frame_size:160 ptime:20`) or, with
`control_message_format = json` in `chan_websocket.conf`, one JSON object with an `event` field.

From Asterisk: `MEDIA_START` (first), `DTMF_END`, `MEDIA_MARK_PROCESSED <id>`, `MEDIA_XOFF` /
`MEDIA_XON` (its queue of our audio is nearly full / has room again), `QUEUE_DRAINED`, `STATUS`,
`MEDIA_BUFFERING_COMPLETED`, `ERROR`. The call's end is the socket closing.
To Asterisk: `MARK_MEDIA <id>` (echoed as `MEDIA_MARK_PROCESSED <id>` once the audio queued before
it has gone out), `FLUSH_MEDIA` (drops the queued audio, like Twilio's `clear`), `HANGUP`, and
others ivr does not need. Commands are answered in the format Asterisk used for `MEDIA_START`.

One difference from Twilio matters to the engine: `FLUSH_MEDIA` drops the pending marks with the
audio and echoes none of them, where Twilio echoes each one at once. `CAPABILITIES` says so.

Checked against Asterisk's "WebSocket" channel driver page (docs.asterisk.org, Configuration /
Channel-Drivers / WebSocket) and, where the page is older than the code, against
`channels/chan_websocket.c` on Asterisk's main branch (the `MARK_MEDIA` command, the JSON
control format, the `DTMF_END digit:n channel_id:…` line, the 128-byte limit on text commands
and the 65500-byte limit on a message). Not confirmed against a running Asterisk.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

import orjson

from ivr.audio import SAMPLE_RATE
from ivr.telephony.audiosocket import Capabilities
from ivr.telephony.twilio import DTMF_DIGITS, Dtmf, Mark, Media, ProtocolError, Start, carrier_start

CARRIER = "asterisk-ws"
CAPABILITIES = Capabilities(clear=True, marks=True)
#: Pending marks are dropped by FLUSH_MEDIA without an echo (Twilio echoes them at once).
MARKS_ECHOED_ON_CLEAR = False
#: Asterisk refuses a text command longer than this (MAX_TEXT_MESSAGE_LEN in chan_websocket.c).
MAX_COMMAND_BYTES = 128
#: Asterisk closes the socket and hangs up on a larger message.
MAX_MESSAGE_BYTES = 65500
#: The only media format spoken: the dialstring must say `c(ulaw)`.
FORMAT = "ulaw"

_FIELD = re.compile(r"(\w+):(\S*)")
#: Plain-text notifications whose argument is a bare id rather than name:value fields.
_ID_EVENTS = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})


#: A dialplan variable naming the caller's channel: `Set(__IVR_CHANNEL=${UNIQUEID})` before
#: `Dial(WebSocket/…)` (inherited by the WebSocket channel, sent in a JSON MEDIA_START).
CALLER_CHANNEL_VARIABLE = "IVR_CHANNEL"


def caller_channel(start: Start) -> str:
    """The channel ARI should hang up or transfer: the caller's, when the dialplan names it;
    else the WebSocket channel itself (hanging it up ends the `Dial()`)."""
    return start.custom_parameters.get(CALLER_CHANNEL_VARIABLE) or start.call_sid


class FlowControl(NamedTuple):
    """MEDIA_XOFF (`paused=True`) or MEDIA_XON: Asterisk's queue of our audio is full / has room."""

    paused: bool


class Notice(NamedTuple):
    """A notification ivr does not act on (STATUS, QUEUE_DRAINED, ERROR, …): logged."""

    event: str
    fields: Mapping[str, str]


def _parse_control(text: str) -> tuple[str, dict[str, Any], bool]:
    """One control line -> (event, fields, is_json)."""
    if text.startswith("{"):
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("bad_json", f"control message is not JSON ({exc})") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            raise ProtocolError("missing_field", "control message: no 'event'")
        return msg["event"], msg, True
    event, _, rest = text.strip().partition(" ")
    if not event:
        raise ProtocolError("missing_field", "empty control message")
    if event in _ID_EVENTS:
        return event, {"id": rest.strip()}, False
    return event, dict(_FIELD.findall(rest)), False


class AsteriskWsParser:
    """Parses what Asterisk sends on one media WebSocket, in order."""

    def __init__(self) -> None:
        self.start: Start | None = None
        self.json_control = False
        self._sequence = 0
        self._chunk = 0
        self._timestamp_ms = 0

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def parse(self, message: str | bytes):
        if isinstance(message, (bytes, bytearray, memoryview)):
            return self._media(bytes(message))
        if len(message) > MAX_MESSAGE_BYTES:
            raise ProtocolError("oversized_message", f"{len(message)} bytes > limit {MAX_MESSAGE_BYTES}")
        event, fields, is_json = _parse_control(message)
        if event == "MEDIA_START":
            return self._start(fields, is_json)
        if self.start is None:
            raise ProtocolError(f"{event.lower()}_before_start", f"'{event}' before 'MEDIA_START'")
        if event == "MEDIA_MARK_PROCESSED":
            name = fields.get("correlation_id") if is_json else fields.get("id")
            if not name:
                raise ProtocolError("missing_field", "MEDIA_MARK_PROCESSED without an id")
            return Mark(sequence=self._next(), name=str(name))
        if event == "DTMF_END":
            digit = str(fields.get("digit", ""))
            if digit not in DTMF_DIGITS or len(digit) != 1:
                raise ProtocolError("bad_field", f"DTMF_END: digit {digit!r:.10} is not one of 0-9 * # A-D")
            return Dtmf(sequence=self._next(), digit=digit, track="inbound_track")
        if event in ("MEDIA_XOFF", "MEDIA_XON"):
            return FlowControl(paused=event == "MEDIA_XOFF")
        return Notice(event=event, fields=MappingProxyType({k: str(v) for k, v in fields.items()}))

    def _start(self, fields: Mapping[str, Any], is_json: bool) -> Start:
        if self.start is not None:
            raise ProtocolError("duplicate_start", "a second MEDIA_START on one socket")
        fmt = str(fields.get("format", ""))
        if fmt != FORMAT:
            raise ProtocolError(
                "media_format", f"MEDIA_START: format {fmt!r:.30}; only ulaw is spoken (dial with c(ulaw))"
            )
        try:
            ptime = int(fields.get("ptime", 20))
            frame = int(fields.get("optimal_frame_size", 160))
        except (TypeError, ValueError):
            raise ProtocolError("bad_field", "MEDIA_START: ptime or optimal_frame_size is not a number") from None
        if frame != SAMPLE_RATE * ptime // 1000:
            raise ProtocolError("media_format", f"MEDIA_START: {frame}-byte frames of {ptime} ms are not 8 kHz mu-law")
        channel_id = str(fields.get("channel_id") or fields.get("connection_id") or "")
        if not channel_id:
            raise ProtocolError("missing_field", "MEDIA_START: no channel_id or connection_id")
        params = {"carrier": CARRIER, "channel": str(fields.get("channel", ""))}
        variables = fields.get("channel_variables") if is_json else None
        if isinstance(variables, dict):
            # Dialplan variables set before Dial(), e.g. Set(IVR_CALLER=...) pass caller data.
            params.update({str(k): str(v) for k, v in variables.items()})
        self.json_control = is_json
        self.start = carrier_start(self._next(), channel_id, str(fields.get("connection_id") or channel_id), params)
        return self.start

    def _media(self, payload: bytes) -> Media:
        if self.start is None:
            raise ProtocolError("media_before_start", "media before 'MEDIA_START'")
        if not payload:
            raise ProtocolError("empty_payload", "empty media message")
        if len(payload) > MAX_MESSAGE_BYTES:
            raise ProtocolError("oversized_payload", f"media of {len(payload)} bytes > limit {MAX_MESSAGE_BYTES}")
        self._chunk += 1
        timestamp = self._timestamp_ms
        self._timestamp_ms += len(payload) * 1000 // SAMPLE_RATE
        return Media(sequence=self._next(), chunk=self._chunk, timestamp_ms=timestamp, track="inbound", payload=payload)


class AsteriskWsWriter:
    """Builds what we send on one media WebSocket, in the control format Asterisk used."""

    __slots__ = ("json_control",)
    capabilities = CAPABILITIES
    #: One 160-byte frame a binary message, the `optimal_frame_size` Asterisk announces.
    max_frames_per_message = 1

    def __init__(self, json_control: bool = False) -> None:
        self.json_control = json_control

    @staticmethod
    def media(ulaw: bytes) -> bytes:
        # Whole 160-byte frames: Asterisk drops the remainder of an odd-sized message unless
        # bulk buffering is on, and the engine only ever sends whole 20 ms frames.
        if not ulaw:
            raise ValueError("empty media payload")
        return ulaw

    def _command(self, command: str, correlation_id: str | None = None) -> str:
        if self.json_control:
            body = {"command": command}
            if correlation_id is not None:
                body["correlation_id"] = correlation_id
            text = orjson.dumps(body).decode()
        else:
            text = command if correlation_id is None else f"{command} {correlation_id}"
        if len(text.encode()) > MAX_COMMAND_BYTES:
            raise ValueError(f"command of {len(text)} bytes > Asterisk's limit of {MAX_COMMAND_BYTES}")
        return text

    def mark(self, name: str) -> str:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"mark name {name!r:.40} must be one word")
        return self._command("MARK_MEDIA", name)

    def clear(self) -> str:
        return self._command("FLUSH_MEDIA")

    def hangup(self) -> str:
        return self._command("HANGUP")


# --- Asterisk's side (used by the replay harness and tests) ----------------------------------


class AsteriskWsSender:
    """Builds the messages chan_websocket sends, for the harness and tests."""

    def __init__(self, channel_id: str, json_control: bool = False, variables: Mapping[str, str] | None = None) -> None:
        self.channel_id = channel_id
        self.json_control = json_control
        self.variables = dict(variables or {})

    def media_start(self) -> str:
        if self.json_control:
            return orjson.dumps({
                "event": "MEDIA_START", "connection_id": self.channel_id, "channel": f"WebSocket/{self.channel_id}",
                "channel_id": self.channel_id, "format": FORMAT, "optimal_frame_size": 160, "ptime": 20,
                "channel_variables": self.variables,
            }).decode()
        return (
            f"MEDIA_START connection_id:{self.channel_id} channel:WebSocket/{self.channel_id} "
            f"channel_id:{self.channel_id} format:{FORMAT} optimal_frame_size:160 ptime:20"
        )

    @staticmethod
    def media(ulaw: bytes) -> bytes:
        return ulaw

    def dtmf(self, digit: str) -> str:
        if self.json_control:
            return orjson.dumps({"event": "DTMF_END", "channel_id": self.channel_id, "digit": digit}).decode()
        return f"DTMF_END digit:{digit} channel_id:{self.channel_id}"

    def mark_processed(self, name: str) -> str:
        if self.json_control:
            return orjson.dumps({"event": "MEDIA_MARK_PROCESSED", "channel_id": self.channel_id, "correlation_id": name}).decode()
        return f"MEDIA_MARK_PROCESSED {name}"

    def event(self, name: str) -> str:
        if self.json_control:
            return orjson.dumps({"event": name, "channel_id": self.channel_id}).decode()
        return name


class OutMedia(NamedTuple):
    payload: bytes


class OutCommand(NamedTuple):
    command: str
    argument: str | None


def parse_command(message: str | bytes, json_control: bool = False) -> OutMedia | OutCommand:
    """Parse what a bot sends to chan_websocket, as Asterisk would."""
    if isinstance(message, (bytes, bytearray)):
        if len(message) > MAX_MESSAGE_BYTES:
            raise ProtocolError("oversized_message", f"{len(message)} bytes > {MAX_MESSAGE_BYTES}: Asterisk hangs up")
        return OutMedia(bytes(message))
    if len(message.encode()) > MAX_COMMAND_BYTES:
        raise ProtocolError("oversized_message", f"command of {len(message)} bytes > {MAX_COMMAND_BYTES}")
    if json_control:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("bad_json", f"command is not JSON ({exc})") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("command"), str):
            raise ProtocolError("missing_field", "command: no 'command'")
        arg = msg.get("correlation_id")
        return OutCommand(msg["command"], str(arg) if arg is not None else None)
    command, _, arg = message.strip().partition(" ")
    return OutCommand(command, arg or None)
