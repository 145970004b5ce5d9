"""Exotel AgentStream (the Voicebot applet: a bidirectional stream over WebSocket).

Exotel's messages are Twilio's shape with snake_case names (`sequence_number`, `stream_sid`,
`start.call_sid`, `start.media_format`, `start.custom_parameters`, `start.from`/`to`) and one
real difference: audio both ways is raw 16-bit little-endian PCM ("audio/x-raw", `bit_rate` 16,
`sample_rate` 8000 as a string), base64 in `media.payload`, not mu-law. We send `media`, `mark`
and `clear`, each with `stream_sid`. Audio we send must come in chunks that are a multiple of
320 bytes, and Exotel asks for at least 100 ms a chunk, so the writer gathers 20 ms frames into
100 ms messages (a mark or a clear sends or drops what is gathered first).

The Voicebot applet's URL may carry up to three custom parameters as its query string; they
arrive in `start.custom_parameters`. Authentication is by Exotel's IP ranges or by HTTP Basic
credentials written into the applet's URL, which Exotel sends as an `Authorization: Basic`
header on the upgrade; `IVR_EXOTEL_BASIC_AUTH` (`user:password`) checks it.

Checked against Exotel's "WebSocket protocol" and "Working with the Stream and Voicebot Applet"
pages (developer.exotel.com, AgentStream). Not confirmed against Exotel itself: whether pending
marks are sent back on `clear` (the engine's clock covers both cases), and whether the 3.2 KB
minimum in the docs means 100 ms at 16 kHz (this writer sends 100 ms at 8 kHz, 1600 bytes).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any, Mapping

import orjson

from ivr.audio import ulaw_to_pcm16
from ivr.telephony.audiosocket import Capabilities
from ivr.telephony.json_stream import Dialect, pcm16le_to_ulaw

CARRIER = "exotel"
CAPABILITIES = Capabilities(clear=True, marks=True)
MARKS_ECHOED_ON_CLEAR = False
#: Audio gathered into one message we send: a multiple of 320 bytes, at least 100 ms.
CHUNK_BYTES = 1600


def _mark_name(msg: Mapping[str, Any]) -> Any:
    mark = msg.get("mark")
    return mark.get("name") if isinstance(mark, dict) else None


DIALECT = Dialect(
    carrier=CARRIER, sequence="sequence_number", stream_id="stream_sid", call_id="call_sid",
    account_id="account_sid", media_format="media_format", sample_rate="sample_rate",
    encodings={"audio/x-raw": pcm16le_to_ulaw},
    parameters=lambda msg, body: body.get("custom_parameters"),
    mark_event="mark", mark_name=_mark_name,
)


class ExotelWriter:
    """Builds what we send to Exotel. `media()` returns None while it gathers a 100 ms chunk."""

    __slots__ = ("stream_sid", "_sid", "_pending")
    capabilities = CAPABILITIES
    #: Frames come one at a time: the writer gathers its own 100 ms chunks (see `flush`).
    max_frames_per_message = 1

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self._sid = orjson.dumps(stream_sid).decode()
        self._pending = bytearray()

    def _message(self, pcm: bytes) -> str:
        return (
            '{"event":"media","stream_sid":' + self._sid + ',"media":{"payload":"'
            + binascii.b2a_base64(pcm, newline=False).decode("ascii") + '"}}'
        )

    def media(self, ulaw: bytes) -> str | None:
        if not ulaw:
            raise ValueError("empty media payload")
        self._pending += ulaw_to_pcm16(ulaw)
        if len(self._pending) < CHUNK_BYTES:
            return None
        pcm = bytes(self._pending)
        self._pending.clear()
        return self._message(pcm)

    def flush(self) -> str | None:
        """What is gathered, sent now (before a mark, or at the end of a reply)."""
        if not self._pending:
            return None
        pcm = bytes(self._pending)
        self._pending.clear()
        return self._message(pcm)

    def mark(self, name: str) -> str:
        return '{"event":"mark","stream_sid":' + self._sid + ',"mark":{"name":' + orjson.dumps(name).decode() + "}}"

    def clear(self) -> str:
        self._pending.clear()
        return '{"event":"clear","stream_sid":' + self._sid + "}"


def basic_auth_ok(expected: str, header: str | None) -> bool:
    """`expected` is `user:password`; `header` the upgrade's Authorization header."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected.encode())


class ExotelSender:
    """Builds the messages Exotel sends, for the harness and tests."""

    def __init__(self, stream_sid: str, call_sid: str) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self._sequence = 0
        self._chunk = 0

    def _head(self, event: str) -> dict[str, Any]:
        self._sequence += 1
        return {"event": event, "sequence_number": str(self._sequence), "stream_sid": self.stream_sid}

    @staticmethod
    def connected() -> str:
        return '{"event":"connected"}'

    def start(self, parameters: Mapping[str, str] | None = None, caller: str = "", callee: str = "") -> str:
        return orjson.dumps({**self._head("start"), "start": {
            "stream_sid": self.stream_sid, "call_sid": self.call_sid, "account_sid": "harness",
            "from": caller, "to": callee, "custom_parameters": dict(parameters or {}),
            "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}}}).decode()

    def media(self, ulaw: bytes, timestamp_ms: int) -> str:
        self._chunk += 1
        pcm = ulaw_to_pcm16(ulaw)
        return orjson.dumps({**self._head("media"), "media": {
            "chunk": str(self._chunk), "timestamp": str(timestamp_ms),
            "payload": binascii.b2a_base64(pcm, newline=False).decode("ascii")}}).decode()

    def dtmf(self, digit: str) -> str:
        return orjson.dumps({**self._head("dtmf"), "dtmf": {"digit": digit, "duration": "100"}}).decode()

    def mark(self, name: str) -> str:
        return orjson.dumps({**self._head("mark"), "mark": {"name": name}}).decode()

    def stop(self, reason: str = "callended") -> str:
        return orjson.dumps({**self._head("stop"), "stop": {"call_sid": self.call_sid, "account_sid": "harness", "reason": reason}}).decode()
