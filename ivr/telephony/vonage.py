"""Vonage Voice API WebSockets, sans I/O: messages <-> the call events the engine speaks.

An NCCO `connect` action with a `websocket` endpoint makes Vonage open a WebSocket to us. The
first message is TEXT, a JSON object: `{"event": "websocket:connected", "content-type":
"audio/l16;rate=8000", ...}` plus the `headers` the NCCO gave (ivr's answer NCCO puts the call's
uuid, its numbers and a per-call token there). After it, audio travels in BINARY messages of
16-bit signed little-endian linear PCM, one 20 ms frame each (320 bytes at 8 kHz, 640 at 16 kHz),
both ways; control travels in TEXT messages:

- from Vonage: `websocket:dtmf` (`digit`, `duration`), `websocket:cleared` (after our `clear`),
  `websocket:notify` (our `notify` payload, once the audio queued before it has played);
- to Vonage: `{"action": "clear"}` (drop the queued audio) and `{"action": "notify",
  "payload": {...}}` (a mark).

The call ends when the socket closes; a hang-up or transfer from the bot goes through the Voice
API's REST `PUT /v1/calls/{uuid}` (ivr.telephony.vonage_control).

Authentication: Vonage signs its webhooks (the answer URL included, with signed webhooks on)
with a JWT in `Authorization: Bearer`, HS256 with the account's signature secret
(`VONAGE_SIGNATURE_SECRET`), carrying a `payload_hash` (SHA-256 of the body) when there is a
body. The WebSocket is not signed: the answer NCCO passes a per-call token in its `headers`
(`ivr.telephony.stream_token`), and the socket's first message must bring it back.

ivr's NCCO asks for `audio/l16;rate=8000`, which needs no resampling; a 16 kHz stream is accepted
and converted to and from 8 kHz with the project's resampler.

Checked against Vonage's "WebSockets" guide and concept page (developer.vonage.com, Voice API),
the NCCO reference for `connect`, and `vonage_jwt.verify_signature` in Vonage's `vonage-jwt`
package (HS256 with the signature secret). Not confirmed against Vonage itself (not reachable here):
whether pending notifies are sent back on `clear` (the guide does not say; this codec assumes
they are not, as Asterisk's and Plivo's are not, and the engine's clock covers both cases), and
the exact fields of `websocket:cleared`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from ivr.audio import SAMPLE_RATE, Resampler, pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony.audiosocket import Capabilities
from ivr.telephony.twilio import DTMF_DIGITS, Dtmf, Mark, Media, ProtocolError, Start, carrier_start, load_object

CARRIER = "vonage"
CAPABILITIES = Capabilities(clear=True, marks=True)
MARKS_ECHOED_ON_CLEAR = False
RATES = (8000, 16000)
#: Where a mark's name travels inside a notify payload.
MARK_KEY = "ivr_mark"
#: Largest text message accepted; the NCCO's headers are limited to 512 bytes.
MAX_TEXT_BYTES = 8 * 1024
#: Largest binary message accepted: one second of 16 kHz audio. Vonage sends 20 ms.
MAX_AUDIO_BYTES = 32000


class Cleared(NamedTuple):
    """`websocket:cleared`: Vonage dropped the audio it held."""


class Notice(NamedTuple):
    event: str


def parse_content_type(value: str) -> int:
    """`audio/l16;rate=16000` -> 16000; anything else is a clear protocol error."""
    kind, _, params = value.partition(";")
    rate = None
    for param in params.split(";"):
        name, _, val = param.strip().partition("=")
        if name == "rate" and val.isdigit():
            rate = int(val)
    if kind.strip().lower() != "audio/l16" or rate not in RATES:
        raise ProtocolError("media_format", f"content-type {value!r:.60}; only audio/l16 at 8000 or 16000 Hz is spoken")
    return rate


class VonageParser:
    """Parses what Vonage sends on one WebSocket, in order."""

    def __init__(self) -> None:
        self.start: Start | None = None
        self.rate = SAMPLE_RATE
        self.token = ""
        self._resampler: Resampler | None = None
        self._sequence = 0
        self._chunk = 0
        self._timestamp_ms = 0

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def parse(self, message: str | bytes):
        if isinstance(message, (bytes, bytearray, memoryview)):
            return self._audio(bytes(message))
        if len(message) > MAX_TEXT_BYTES:
            raise ProtocolError("oversized_message", f"{len(message)} bytes > limit {MAX_TEXT_BYTES}")
        msg = load_object(message)
        event = msg.get("event")
        if self.start is None:
            # The first message may lack "event" on older platforms: its content-type says what it is.
            if event in (None, "websocket:connected"):
                return self._connected(msg)
            raise ProtocolError("before_start", f"{event!r:.40} before websocket:connected")
        if event == "websocket:dtmf":
            digit = str(msg.get("digit", ""))
            if len(digit) != 1 or digit not in DTMF_DIGITS:
                raise ProtocolError("bad_field", f"websocket:dtmf: digit {digit!r:.10} is not one of 0-9 * # A-D")
            return Dtmf(sequence=self._next(), digit=digit, track="inbound_track")
        if event == "websocket:notify":
            payload = msg.get("payload")
            name = payload.get(MARK_KEY) if isinstance(payload, dict) else None
            if not isinstance(name, str) or not name:
                return Notice(event=event)  # someone else's notify: not a mark of ours
            return Mark(sequence=self._next(), name=name)
        if event == "websocket:cleared":
            return Cleared()
        if event == "websocket:connected":
            raise ProtocolError("duplicate_start", "a second websocket:connected")
        if not isinstance(event, str):
            raise ProtocolError("missing_field", "message: no 'event'")
        return Notice(event=event)

    def _connected(self, msg: dict[str, Any]) -> Start:
        content_type = msg.get("content-type")
        if not isinstance(content_type, str):
            raise ProtocolError("missing_field", "websocket:connected: no 'content-type'")
        self.rate = parse_content_type(content_type)
        if self.rate != SAMPLE_RATE:
            self._resampler = Resampler(self.rate, SAMPLE_RATE)
        headers = {str(k): str(v) for k, v in msg.items() if k not in ("event", "content-type") and not isinstance(v, (dict, list))}
        self.token = headers.pop("ivr_token", "")
        call_id = headers.get("call_uuid") or headers.get("uuid") or ""
        if not call_id:
            raise ProtocolError("missing_field", "websocket:connected: no call_uuid header (set it in the NCCO's headers)")
        params = {"carrier": CARRIER, **headers}
        if "from" in headers:
            params["From"] = headers["from"]
        if "to" in headers:
            params["To"] = headers["to"]
        self.start = carrier_start(self._next(), call_id, headers.get("conversation_uuid") or call_id, params)
        return self.start

    def _audio(self, pcm: bytes) -> Media:
        if self.start is None:
            raise ProtocolError("media_before_start", "audio before websocket:connected")
        if not pcm:
            raise ProtocolError("empty_payload", "empty audio message")
        if len(pcm) > MAX_AUDIO_BYTES:
            raise ProtocolError("oversized_payload", f"audio of {len(pcm)} bytes > limit {MAX_AUDIO_BYTES}")
        if len(pcm) % 2:
            raise ProtocolError("bad_field", f"audio of {len(pcm)} bytes is not whole 16-bit samples")
        self._chunk += 1
        timestamp = self._timestamp_ms
        self._timestamp_ms += len(pcm) * 500 // self.rate
        pcm8 = self._resampler.process(pcm) if self._resampler is not None else pcm
        return Media(
            sequence=self._next(), chunk=self._chunk, timestamp_ms=timestamp, track="inbound",
            payload=pcm16_to_ulaw(pcm8) if pcm8 else b"",
        )


class VonageWriter:
    """Builds what we send on one Vonage WebSocket, at the rate the stream was opened with."""

    __slots__ = ("rate", "_resampler")
    capabilities = CAPABILITIES
    #: Vonage plays binary messages as whole 20 ms frames.
    max_frames_per_message = 1

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        if rate not in RATES:
            raise ValueError(f"unsupported rate {rate}")
        self.rate = rate
        self._resampler = Resampler(SAMPLE_RATE, rate) if rate != SAMPLE_RATE else None

    def media(self, ulaw: bytes) -> bytes:
        # One 20 ms frame a message: Vonage plays binary messages as whole frames.
        if not ulaw:
            raise ValueError("empty media payload")
        pcm = ulaw_to_pcm16(ulaw)
        return self._resampler.process(pcm) if self._resampler is not None else pcm

    @staticmethod
    def mark(name: str) -> str:
        return orjson.dumps({"action": "notify", "payload": {MARK_KEY: name}}).decode()

    @staticmethod
    def clear() -> str:
        return '{"action":"clear"}'


def answer(stream_url: str, headers: dict[str, str]) -> str:
    """The NCCO that connects a call to ivr: a WebSocket at 8 kHz with the call's data in its headers."""
    return orjson.dumps([{
        "action": "connect",
        "endpoint": [{"type": "websocket", "uri": stream_url, "content-type": "audio/l16;rate=8000", "headers": headers}],
    }]).decode()


def verify_webhook(signature_secret: str, authorization: str | None, body: bytes = b"") -> bool:
    """True when the request carries Vonage's JWT, signed with the secret, for this body."""
    import hashlib

    import jwt

    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    try:
        claims = jwt.decode(authorization[7:].strip(), signature_secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        return False
    expected = claims.get("payload_hash")
    if body or expected is not None:
        return isinstance(expected, str) and expected.lower() == hashlib.sha256(body).hexdigest()
    return True


# --- Vonage's side (used by the replay harness and tests) ------------------------------------


class VonageSender:
    """Builds the messages Vonage sends, for the harness and tests."""

    def __init__(self, call_uuid: str, rate: int = SAMPLE_RATE, headers: dict[str, str] | None = None) -> None:
        self.call_uuid = call_uuid
        self.rate = rate
        self.headers = dict(headers or {})

    def connected(self) -> str:
        return orjson.dumps({
            "event": "websocket:connected", "content-type": f"audio/l16;rate={self.rate}",
            "call_uuid": self.call_uuid, **self.headers,
        }).decode()

    @staticmethod
    def audio(pcm: bytes) -> bytes:
        return pcm

    @staticmethod
    def dtmf(digit: str) -> str:
        return orjson.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 250}).decode()

    @staticmethod
    def notify(payload: dict) -> str:
        return orjson.dumps({"event": "websocket:notify", "payload": payload}).decode()

    @staticmethod
    def cleared() -> str:
        return '{"event":"websocket:cleared"}'


class OutAudio(NamedTuple):
    pcm: bytes


class OutClear(NamedTuple):
    pass


class OutNotify(NamedTuple):
    payload: Any


def parse_outbound(message: str | bytes) -> OutAudio | OutClear | OutNotify:
    """Parse what a bot sends to Vonage, as Vonage would."""
    if isinstance(message, (bytes, bytearray)):
        if len(message) % 2:
            raise ProtocolError("bad_field", "audio is not whole 16-bit samples")
        return OutAudio(bytes(message))
    try:
        msg = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON ({exc})") from None
    action = msg.get("action") if isinstance(msg, dict) else None
    if action == "clear":
        return OutClear()
    if action == "notify":
        return OutNotify(msg.get("payload"))
    raise ProtocolError("unknown_event", f"action {action!r:.40} is not one Vonage accepts")
