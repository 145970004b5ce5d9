"""Telnyx media streaming over WebSocket (TeXML `<Stream>` or Call Control `streaming_start`).

Telnyx's stream is Twilio's shape with snake_case names: `connected`, `start` (`stream_id`,
`start.call_control_id`, `start.media_format` with `encoding: "PCMU"`, `sample_rate: 8000`,
`start.custom_parameters`, `start.from`/`to`), `media` (base64 mu-law, `chunk`, `timestamp`,
`track`), `dtmf`, `mark`, `error`, `stop`. With bidirectional RTP mode (`bidirectionalMode="rtp"`,
codec PCMU) we send `media` (`{"event": "media", "media": {"payload": ...}}`, 20 ms to 30 s of
audio), `mark` and `clear`; `clear` returns the pending marks at once, as Twilio's does.

Authentication: Telnyx signs its webhooks (the TeXML voice webhook included) with Ed25519 over
`"{telnyx-timestamp}|{body}"` (headers `telnyx-signature-ed25519`, `telnyx-timestamp`); the
public key is the account's, from the portal (`TELNYX_PUBLIC_KEY`). The media WebSocket carries
no signature; a `stream_auth_token` configured on the stream comes back as the
`x-telnyx-streaming-auth-token` header (and in `connected`), which `IVR_TELNYX_STREAM_TOKEN`
checks.

Checked against Telnyx's "Stream call media over WebSocket" AsyncAPI reference, the TeXML
`<Stream>` reference (developers.telnyx.com) and the signature check in the official `telnyx`
Python SDK (`telnyx/lib/webhook_verification.py`: header names, payload format, 5-minute
tolerance). Not confirmed against Telnyx itself (not reachable here): whether TeXML also takes
Twilio's `<Connect><Stream>`; the answer below uses the documented `<Start><Stream>` plus a
`<Pause>` that holds the call, and ivr hangs up through Call Control when the bot ends it.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Mapping
from xml.sax.saxutils import quoteattr

import orjson

from ivr.telephony.audiosocket import Capabilities
from ivr.telephony.json_stream import Dialect

CARRIER = "telnyx"
CAPABILITIES = Capabilities(clear=True, marks=True)
MARKS_ECHOED_ON_CLEAR = True
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
STREAM_TOKEN_HEADER = "x-telnyx-streaming-auth-token"
#: As the SDK: a webhook older or newer than this is refused (replay protection).
TIMESTAMP_TOLERANCE_S = 300


def _mark_name(msg: Mapping[str, Any]) -> Any:
    mark = msg.get("mark")
    return mark.get("name") if isinstance(mark, dict) else None


DIALECT = Dialect(
    carrier=CARRIER, sequence="sequence_number", stream_id="stream_id", call_id="call_control_id",
    account_id="user_id", media_format="media_format", sample_rate="sample_rate", encodings={"PCMU": None},
    parameters=lambda msg, body: body.get("custom_parameters"),
    mark_event="mark", mark_name=_mark_name, notices=frozenset({"error"}),
)


class TelnyxWriter:
    __slots__ = ()
    capabilities = CAPABILITIES
    #: Telnyx takes 20 ms to 30 s of audio a `media` message: frames sent together go as one.
    #: A second at most, as on Twilio.
    max_frames_per_message = 50

    @staticmethod
    def media(ulaw: bytes) -> str:
        if not ulaw:
            raise ValueError("empty media payload")
        return '{"event":"media","media":{"payload":"' + binascii.b2a_base64(ulaw, newline=False).decode("ascii") + '"}}'

    @staticmethod
    def mark(name: str) -> str:
        return orjson.dumps({"event": "mark", "mark": {"name": name}}).decode()

    @staticmethod
    def clear() -> str:
        return '{"event":"clear"}'


#: How long the TeXML holds the call after starting the stream (the stream runs alongside).
HOLD_S = 14400


def answer(stream_url: str, parameters: Mapping[str, str] | None = None) -> str:
    """The TeXML that connects a call to ivr: a bidirectional PCMU stream, then a long pause that
    holds the call while the stream runs (TeXML's documented `<Start><Stream>` form)."""
    params = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in (parameters or {}).items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Start>'
        f'<Stream url={quoteattr(stream_url)} track="inbound_track" codec="PCMU" '
        f'bidirectionalMode="rtp" bidirectionalCodec="PCMU">{params}</Stream>'
        f'</Start><Pause length="{HOLD_S}"/></Response>'
    )


def verify_webhook(public_key_b64: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """True when the webhook's Ed25519 signature is Telnyx's, and fresh."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
        return False
    try:
        key = VerifyKey(base64.b64decode(public_key_b64, validate=True))
        key.verify(timestamp.encode() + b"|" + body, base64.b64decode(signature, validate=True))
    except (BadSignatureError, ValueError, binascii.Error, TypeError):
        return False
    return True


class TelnyxSender:
    """Builds the messages Telnyx sends, for the harness and tests."""

    def __init__(self, stream_id: str, call_control_id: str) -> None:
        self.stream_id = stream_id
        self.call_control_id = call_control_id
        self._sequence = 0
        self._chunk = 0

    def _head(self, event: str) -> dict[str, Any]:
        self._sequence += 1
        return {"event": event, "sequence_number": str(self._sequence), "stream_id": self.stream_id}

    @staticmethod
    def connected() -> str:
        return '{"event":"connected","version":"1.0.0"}'

    def start(self, parameters: Mapping[str, str] | None = None, caller: str = "", callee: str = "") -> str:
        return orjson.dumps({**self._head("start"), "start": {
            "user_id": "ivr-harness", "call_control_id": self.call_control_id, "call_session_id": self.stream_id,
            "from": caller, "to": callee, "custom_parameters": dict(parameters or {}),
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}).decode()

    def media(self, ulaw: bytes, timestamp_ms: int) -> str:
        self._chunk += 1
        return orjson.dumps({**self._head("media"), "media": {
            "track": "inbound", "chunk": str(self._chunk), "timestamp": str(timestamp_ms),
            "payload": binascii.b2a_base64(ulaw, newline=False).decode("ascii")}}).decode()

    def dtmf(self, digit: str) -> str:
        return orjson.dumps({**self._head("dtmf"), "dtmf": {"digit": digit}}).decode()

    def mark(self, name: str) -> str:
        return orjson.dumps({**self._head("mark"), "mark": {"name": name}}).decode()

    def stop(self) -> str:
        return orjson.dumps({**self._head("stop"), "stop": {"call_control_id": self.call_control_id}}).decode()
