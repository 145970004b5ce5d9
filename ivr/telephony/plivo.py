"""Plivo audio streams over WebSocket (Plivo XML `<Stream bidirectional="true">`).

Plivo sends `start` (`sequenceNumber` as a number, `start.callId`, `start.streamId`,
`start.accountId`, `start.tracks`, `start.mediaFormat` with `encoding` and `sampleRate`, and the
XML's `extraHeaders` as a top-level `extra_headers` string), `media`, `dtmf`, `playedStream` (a
checkpoint we sent has played) and `clearedAudio` (our clear was done). There is no `stop`: the
stream ends when the socket closes. We send `playAudio` (`media.contentType` `audio/x-mulaw`,
`sampleRate` 8000, base64 `payload`), `checkpoint` (`name`) and `clearAudio`. A checkpoint is
answered only when the audio before it has played: `clearAudio` drops the pending ones unanswered.

ivr's Plivo XML asks for `audio/x-mulaw;rate=8000`, so nothing is resampled; Plivo's default,
`audio/x-l16;rate=8000`, is accepted too (converted to mu-law on the way in).

Authentication: Plivo signs its webhooks with its V3 signature (`X-Plivo-Signature-V3`, a
comma-separated list of base64 HMAC-SHA256 digests with the auth token, over the URL with its
sorted query, then the sorted POST parameters, then `"." + X-Plivo-Signature-V3-Nonce`);
`PLIVO_AUTH_TOKEN` checks it. Plivo's stream socket carries no signature; the XML passes a per-call
token in `extraHeaders`, which the socket checks.

Checked against Plivo's "Stream Event Protocol" and `<Stream>` XML references (plivo.com/docs)
and `plivo/utils/signature_v3.py` in the official `plivo` Python SDK (the tests sign with the
SDK's own functions). Not confirmed against Plivo itself: the exact fields of `media` beyond
`payload` (`chunk`, `timestamp`, `track` are read when present and made up when not).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

import orjson

from ivr.telephony.audiosocket import Capabilities
from ivr.telephony.json_stream import Dialect, pcm16le_to_ulaw

CARRIER = "plivo"
CAPABILITIES = Capabilities(clear=True, marks=True)
MARKS_ECHOED_ON_CLEAR = False
SIGNATURE_HEADER = "x-plivo-signature-v3"
NONCE_HEADER = "x-plivo-signature-v3-nonce"


def parse_extra_headers(value: Any) -> dict[str, str]:
    """`extra_headers` as Plivo sends it: `a=1;b=2` (or `a=1,b=2`, as the XML writes it)."""
    if not isinstance(value, str):
        return {}
    out = {}
    for item in value.replace(",", ";").split(";"):
        key, sep, val = item.strip().partition("=")
        if sep and key:
            out[key] = val
    return out


DIALECT = Dialect(
    carrier=CARRIER, sequence="sequenceNumber", stream_id="streamId", call_id="callId",
    account_id="accountId", media_format="mediaFormat", sample_rate="sampleRate",
    encodings={"audio/x-mulaw": None, "audio/x-l16": pcm16le_to_ulaw},
    parameters=lambda msg, body: parse_extra_headers(msg.get("extra_headers")),
    mark_event="playedStream", mark_name=lambda msg: msg.get("name"), notices=frozenset({"clearedAudio"}),
)


class PlivoWriter:
    __slots__ = ("stream_id", "_sid")
    capabilities = CAPABILITIES
    #: Plivo's docs give no size for `playAudio`: one 20 ms frame a message, as checked.
    max_frames_per_message = 1

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self._sid = orjson.dumps(stream_id).decode()

    @staticmethod
    def media(ulaw: bytes) -> str:
        if not ulaw:
            raise ValueError("empty media payload")
        return (
            '{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"'
            + binascii.b2a_base64(ulaw, newline=False).decode("ascii") + '"}}'
        )

    def mark(self, name: str) -> str:
        return '{"event":"checkpoint","streamId":' + self._sid + ',"name":' + orjson.dumps(name).decode() + "}"

    def clear(self) -> str:
        return '{"event":"clearAudio","streamId":' + self._sid + "}"


def answer(stream_url: str, extra_headers: Mapping[str, str] | None = None) -> str:
    """The Plivo XML that connects a call to ivr: a bidirectional mu-law stream that holds the call."""
    headers = ",".join(f"{k}={v}" for k, v in (extra_headers or {}).items())
    extra = f" extraHeaders={quoteattr(headers)}" if headers else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        f'<Stream bidirectional="true" keepCallAlive="true" audioTrack="inbound" '
        f'contentType="audio/x-mulaw;rate=8000"{extra}>{escape(stream_url)}</Stream>'
        "</Response>"
    )


#: Plivo puts "X-PH-" before each `sipHeaders` name; names are letters and digits only.
SUMMARY_SIP_HEADER = "IvrSummary"


def transfer(target: str, summary: str = "", say: str = "") -> str:
    """The Plivo XML a transferred call is sent to (`aleg_url`): `<Dial><User>` for a SIP URI,
    with the summary as the `X-PH-IvrSummary` header, else `<Dial><Number>`."""
    speak = f"<Speak>{escape(say)}</Speak>" if say else ""
    if target.startswith(("sip:", "sips:")):
        headers = f" sipHeaders={quoteattr(SUMMARY_SIP_HEADER + '=' + _sip_header_value(summary))}" if summary else ""
        dial = f"<Dial{headers}><User>{escape(target)}</User></Dial>"
    else:
        dial = f"<Dial><Number>{escape(target.lstrip('+'))}</Number></Dial>"
    return f'<?xml version="1.0" encoding="UTF-8"?><Response>{speak}{dial}</Response>'


def _sip_header_value(text: str, limit: int = 200) -> str:
    # Plivo allows only letters, digits and "%" in sipHeaders values: everything else is
    # percent-encoded, as its docs suggest.
    return "".join(chr(b) if chr(b).isalnum() else f"%{b:02X}" for b in text[:limit].encode())


def _sorted_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{k}={v}" for k, v in pairs)


def signature_base(method: str, url: str, params: Mapping[str, str]) -> str:
    """The string Plivo's V3 signature covers (the SDK's construct_get_url / construct_post_url)."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if method.upper() == "GET":
        query = _sorted_query("&".join(filter(None, [parts.query, "&".join(f"{k}={v}" for k, v in params.items())])))
        return base + ("?" + query if query else "")
    query = _sorted_query(parts.query)
    if query or params:
        base += "?" + query
    if query and params:
        base += "."
    return base + "".join(f"{k}{params[k]}" for k in sorted(params))


def verify_webhook(auth_token: str, method: str, url: str, params: Mapping[str, str], nonce: str, signature: str) -> bool:
    if not nonce or not signature:
        return False
    message = f"{signature_base(method, url, params)}.{nonce}".encode()
    expected = base64.b64encode(hmac.new(auth_token.encode(), message, hashlib.sha256).digest())
    return any(hmac.compare_digest(expected, given.strip().encode()) for given in signature.split(","))


class PlivoSender:
    """Builds the messages Plivo sends, for the harness and tests."""

    def __init__(self, stream_id: str, call_id: str, extra_headers: str = "") -> None:
        self.stream_id = stream_id
        self.call_id = call_id
        self.extra_headers = extra_headers
        self._sequence = 0
        self._chunk = 0

    def _head(self, event: str) -> dict[str, Any]:
        self._sequence += 1
        return {"event": event, "sequenceNumber": self._sequence, "streamId": self.stream_id}

    def start(self) -> str:
        msg = {**self._head("start"), "start": {
            "callId": self.call_id, "streamId": self.stream_id, "accountId": "MAHARNESS", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}
        if self.extra_headers:
            msg["extra_headers"] = self.extra_headers
        return orjson.dumps(msg).decode()

    def media(self, ulaw: bytes, timestamp_ms: int) -> str:
        self._chunk += 1
        return orjson.dumps({**self._head("media"), "media": {
            "track": "inbound", "timestamp": str(timestamp_ms), "chunk": self._chunk,
            "payload": binascii.b2a_base64(ulaw, newline=False).decode("ascii")}}).decode()

    def dtmf(self, digit: str) -> str:
        return orjson.dumps({**self._head("dtmf"), "dtmf": {"track": "inbound", "digit": digit}}).decode()

    def played(self, name: str) -> str:
        return orjson.dumps({**self._head("playedStream"), "name": name}).decode()

    def cleared(self) -> str:
        return orjson.dumps(self._head("clearedAudio")).decode()
