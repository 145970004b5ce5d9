"""Twilio-like JSON media streams (Telnyx, Plivo, Exotel), sans I/O, driven by a `Dialect`.

Several carriers copied the shape of Twilio's Media Streams: one JSON text message per event,
`start` with the call's identity and media format, `media` with base64 audio, `dtmf`, a mark
echoed when the audio before it has played, `stop`. They differ in names (`sequence_number` or
`sequenceNumber`, `stream_id` or `streamSid`), in the audio's encoding (mu-law, or 16-bit PCM on
Exotel) and in what we send back (`playAudio` and `checkpoint` on Plivo). A `Dialect` is those
differences as data; `DialectParser` reads any of them into the engine's events, and each
carrier's module (`telnyx.py`, `plivo.py`, `exotel.py`) holds its dialect, its writer and what
it was checked against. Twilio keeps its own hand-tuned parser (`twilio.py`): it is the
reference the others are tested against, message for message.
"""

from __future__ import annotations

import binascii
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

import orjson

from ivr.audio import SAMPLE_RATE, pcm16_to_ulaw
from ivr.telephony.twilio import (
    DTMF_DIGITS, MAX_GAP_MS, MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES, MULAW_ENCODING, Connected, DroppedMedia, Dtmf, Mark,
    Media, MediaFormat, ProtocolError, Start, Stop, _int, _obj, _str, media_gap,
)

MAX_GAP_BYTES = MAX_GAP_MS * SAMPLE_RATE // 1000


class Dialect(NamedTuple):
    carrier: str
    sequence: str  #: key of the message counter
    stream_id: str  #: key of the stream's id on each message (and inside `start` when `start_stream_id` is empty)
    call_id: str  #: key of the call's id inside `start`
    account_id: str
    media_format: str
    sample_rate: str
    #: Accepted encodings and how a payload of each becomes 8 kHz mu-law (None: it already is).
    encodings: Mapping[str, Callable[[bytes], bytes] | None]
    #: The call's custom parameters, from the whole `start` message and its body.
    parameters: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any] | None]
    mark_event: str  #: the event that echoes a mark
    mark_name: Callable[[Mapping[str, Any]], Any]  #: where the echoed mark's name is
    notices: frozenset[str] = frozenset()  #: events that are logged and otherwise ignored
    start_stream_id: str = ""  #: key of the stream id inside `start`, when it differs


class Notice(NamedTuple):
    """An event the carrier sends that the engine does not act on (an error report, a clear's
    confirmation): logged by the server."""

    event: str
    body: Mapping[str, Any]


def pcm16le_to_ulaw(payload: bytes) -> bytes:
    if len(payload) % 2:
        raise ProtocolError("bad_field", f"16-bit audio of {len(payload)} bytes is not whole samples")
    return pcm16_to_ulaw(payload)


class DialectParser:
    """Parses the inbound messages of one stream in `dialect`, in order.

    Audio ordering follows Twilio's rules: a chunk at or below the last one is dropped (Telnyx
    says its frames may arrive out of order), and lost chunks are reported as `gap_bytes`.
    """

    def __init__(self, dialect: Dialect, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.dialect = dialect
        self.max_message_bytes = max_message_bytes
        self.start: Start | None = None
        self.stopped = False
        self._decode: Callable[[bytes], bytes] | None = None
        self._last_chunk = 0
        self._next_timestamp_ms: int | None = None
        self._bytes_per_ms = SAMPLE_RATE // 1000
        self.lost_chunks = 0
        self.long_gaps = 0

    def parse(self, message: str | bytes):
        if not isinstance(message, str):
            raise ProtocolError("binary_frame", f"binary WebSocket frame of {len(message)} bytes; {self.dialect.carrier} sends text")
        if len(message) > self.max_message_bytes:
            raise ProtocolError("oversized_message", f"{len(message)} bytes > limit {self.max_message_bytes}")
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("bad_json", f"not JSON ({exc})") from None
        if not isinstance(msg, dict):
            raise ProtocolError("bad_json", f"not a JSON object but {type(msg).__name__}")
        event = msg.get("event")
        d = self.dialect
        if event == "media":
            return self._media(msg)
        if event == "connected":
            return Connected(protocol=str(msg.get("protocol", "")), version=str(msg.get("version", "")))
        if event == "start":
            return self._start(msg)
        if event == d.mark_event:
            seq = self._common(msg, event)
            name = d.mark_name(msg)
            if not isinstance(name, str) or not name:
                raise ProtocolError("missing_field", f"{event}: no mark name")
            return Mark(sequence=seq, name=name)
        if event == "dtmf":
            seq = self._common(msg, "dtmf")
            digit = _str(_obj(msg, "dtmf", "dtmf"), "digit", "dtmf.dtmf")
            if digit not in DTMF_DIGITS:
                raise ProtocolError("bad_field", f"dtmf: digit {digit!r:.10} is not one of 0-9 * # A-D")
            return Dtmf(sequence=seq, digit=digit, track="inbound_track")
        if event == "stop":
            seq = self._common(msg, "stop")
            self.stopped = True
            call_id = self.start.call_sid if self.start else ""
            return Stop(sequence=seq, account_sid=self.start.account_sid if self.start else "", call_sid=call_id)
        if event in d.notices:
            return Notice(event=event, body=MappingProxyType(msg))
        if event is None:
            raise ProtocolError("missing_field", "message: no 'event'")
        raise ProtocolError("unknown_event", f"event {event!r:.40} is not one {d.carrier} sends")

    def _common(self, msg: Mapping[str, Any], where: str) -> int:
        if self.start is None:
            raise ProtocolError(f"{where}_before_start", f"'{where}' before 'start'")
        if self.stopped:
            raise ProtocolError("after_stop", f"'{where}' after 'stop'")
        sid = msg.get(self.dialect.stream_id)
        if sid is not None and sid != self.start.stream_sid:
            raise ProtocolError("stream_sid_mismatch", f"{where}: stream id {sid!r:.40} is not this stream's")
        return _int(msg, self.dialect.sequence, where) if self.dialect.sequence in msg else 0

    def _start(self, msg: Mapping[str, Any]) -> Start:
        d = self.dialect
        if self.start is not None:
            raise ProtocolError("duplicate_start", "a second 'start' on one stream")
        body = _obj(msg, "start", "start")
        sid_key = d.start_stream_id or d.stream_id
        stream_id = _str(body, sid_key, "start.start") if sid_key in body else _str(msg, d.stream_id, "start")
        call_id = _str(body, d.call_id, "start.start")
        fmt = _obj(body, d.media_format, "start.start")
        encoding = fmt.get("encoding")
        try:
            rate = int(fmt.get(d.sample_rate))  # type: ignore[arg-type]  # Exotel sends "8000"
        except (TypeError, ValueError):
            raise ProtocolError("media_format", f"start: {d.media_format} {fmt!r:.100} lacks a numeric {d.sample_rate}") from None
        if encoding not in d.encodings or rate != SAMPLE_RATE or int(fmt.get("channels", 1)) != 1:
            raise ProtocolError(
                "media_format",
                f"start: {encoding!r:.30} at {rate} Hz; only {', '.join(d.encodings)} at 8000 Hz mono is spoken",
            )
        self._decode = d.encodings[encoding]
        if self._decode is not None:
            self._bytes_per_ms = 2 * SAMPLE_RATE // 1000
        params: dict[str, str] = {"carrier": d.carrier}
        raw_params = d.parameters(msg, body)
        if raw_params is not None and not isinstance(raw_params, dict):
            raise ProtocolError("bad_field", "start: its custom parameters are not an object")
        params.update({str(k): str(v) for k, v in (raw_params or {}).items()})
        for key, name in (("from", "From"), ("to", "To")):
            if isinstance(body.get(key), str):
                params[name] = body[key]
        seq = _int(msg, d.sequence, "start") if d.sequence in msg else 1
        self.start = Start(
            sequence=seq,
            stream_sid=stream_id,
            account_sid=str(body.get(d.account_id, "")),
            call_sid=call_id,
            tracks=tuple(str(t) for t in body.get("tracks") or ["inbound"]),
            custom_parameters=MappingProxyType(params),
            media_format=MediaFormat(encoding=MULAW_ENCODING, sample_rate=SAMPLE_RATE, channels=1),
        )
        return self.start

    def _media(self, msg: Mapping[str, Any]) -> Media | DroppedMedia:
        seq = self._common(msg, "media")
        body = _obj(msg, "media", "media")
        payload_b64 = _str(body, "payload", "media.media")
        if not payload_b64:
            raise ProtocolError("empty_payload", "media: empty payload")
        limit = MAX_PAYLOAD_BYTES * (2 if self._decode is not None else 1)
        if len(payload_b64) > (limit + 2) // 3 * 4:
            raise ProtocolError("oversized_payload", f"media: payload of ~{len(payload_b64) * 3 // 4} bytes > limit {limit}")
        try:
            payload = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("bad_base64", f"media: payload is not base64 ({exc})") from None
        if not payload:
            raise ProtocolError("empty_payload", "media: payload decodes to nothing")
        track = body.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            return DroppedMedia(sequence=seq, chunk=0, reason="track")
        chunk = _int(body, "chunk", "media.media") if "chunk" in body else self._last_chunk + 1
        timestamp = _int(body, "timestamp", "media.media") if "timestamp" in body else (self._next_timestamp_ms or 0)
        last = self._last_chunk
        if chunk <= last:
            return DroppedMedia(sequence=seq, chunk=chunk, reason="duplicate" if chunk == last else "out_of_order")
        ulaw = self._decode(payload) if self._decode is not None else payload
        gap_bytes = skipped_ms = 0
        if chunk > last + 1 and last:
            self.lost_chunks += chunk - last - 1
            gap_bytes, skipped_ms = media_gap(chunk - last - 1, self._next_timestamp_ms, timestamp, len(ulaw), MAX_GAP_BYTES)
            self.long_gaps += skipped_ms > 0
        self._last_chunk = chunk
        self._next_timestamp_ms = timestamp + len(payload) // self._bytes_per_ms
        return Media(sequence=seq, chunk=chunk, timestamp_ms=timestamp, track="inbound", payload=ulaw,
                     gap_bytes=gap_bytes, skipped_ms=skipped_ms)
