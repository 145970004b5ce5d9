"""Twilio Media Streams, sans I/O: text messages <-> typed events. No sockets here.

`StreamParser` turns each inbound WebSocket message into one frozen event or raises a
`ProtocolError` whose `kind` names what was wrong. It keeps the little state the protocol needs
(has `start` arrived, which stream, which sequence numbers came before) so that the caller can
skip a bad message and keep the call. `StreamWriter` builds the outbound messages.

Protocol reference: Twilio's "Media Streams - WebSocket Messages" page. Numbers such as
`sequenceNumber`, `chunk` and `timestamp` arrive as strings; `mediaFormat.sampleRate` and
`channels` as JSON numbers.
"""

from __future__ import annotations

import binascii
import itertools
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Union

import orjson

from ivr.audio.framing import FRAME_BYTES, SAMPLE_RATE

#: Largest inbound message accepted, in bytes of text. A media frame of 20 ms is ~300 bytes and
#: a `start` with custom parameters a few kilobytes; Twilio documents no limit of its own.
MAX_MESSAGE_BYTES = 64 * 1024
#: Largest audio payload accepted in one `media` message: one second of 8 kHz mu-law.
MAX_PAYLOAD_BYTES = SAMPLE_RATE
#: Longest hole in the caller's audio (lost frames, judged by `chunk` and `timestamp`) that is
#: filled with silence. A longer jump comes from a broken or hostile sender, not from lost
#: packets: it is reported (`Media.skipped_ms`) and not filled, so no per-call work grows with a
#: number the sender chose.
MAX_GAP_MS = 2000
MULAW_ENCODING = "audio/x-mulaw"
DTMF_DIGITS = frozenset("0123456789*#ABCD")


#: A <Parameter> the replay harness (ivr.harness) adds when it runs the call clock N times faster
#: than real time, so that the bot's playout clock runs at the same rate as its playback.
CLOCK_RATE_PARAMETER = "IvrClockRate"


class ProtocolError(ValueError):
    """One inbound message broke the protocol. `kind` is a short stable label (used in metrics)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# --- inbound events -------------------------------------------------------------------------
# Immutable named tuples rather than frozen dataclasses: a media event is built 50 times a second
# per call, and a frozen dataclass's __init__ costs several times a tuple's.


class Connected(NamedTuple):
    protocol: str
    version: str


class MediaFormat(NamedTuple):
    encoding: str
    sample_rate: int
    channels: int


class Start(NamedTuple):
    sequence: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    media_format: MediaFormat


class Media(NamedTuple):
    """One piece of caller audio.

    `gap_bytes` is how much audio went missing just before this piece (lost frames, judged by
    `chunk` and `timestamp`): the receiver inserts that much silence so time stays true.
    `skipped_ms` is a jump too long to be lost frames (over MAX_GAP_MS): not filled, only reported.
    """

    sequence: int
    chunk: int
    timestamp_ms: int
    track: str
    payload: bytes
    gap_bytes: int = 0
    skipped_ms: int = 0


class DroppedMedia(NamedTuple):
    """A media message that was valid but must not be played: late, repeated, or another track."""

    sequence: int
    chunk: int
    reason: str  # "out_of_order" | "duplicate" | "track"


class Dtmf(NamedTuple):
    sequence: int
    digit: str
    track: str


class Mark(NamedTuple):
    sequence: int
    name: str


class Stop(NamedTuple):
    sequence: int
    account_sid: str
    call_sid: str


Event = Union[Connected, Start, Media, DroppedMedia, Dtmf, Mark, Stop]


# --- parsing --------------------------------------------------------------------------------


def _obj(msg: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = msg.get(key)
    if value is None:
        raise ProtocolError("missing_field", f"{where}: no '{key}'")
    if not isinstance(value, dict):
        raise ProtocolError("bad_field", f"{where}: '{key}' is not an object")
    return value


def _str(msg: Mapping[str, Any], key: str, where: str) -> str:
    value = msg.get(key)
    if value is None:
        raise ProtocolError("missing_field", f"{where}: no '{key}'")
    if not isinstance(value, str):
        raise ProtocolError("bad_field", f"{where}: '{key}' is not a string")
    return value


def _int(msg: Mapping[str, Any], key: str, where: str) -> int:
    """A protocol number: Twilio sends most as decimal strings; plain JSON integers are accepted."""
    value = msg.get(key)
    if value is None:
        raise ProtocolError("missing_field", f"{where}: no '{key}'")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ProtocolError("bad_field", f"{where}: '{key}' is not a non-negative integer: {value!r:.40}")


class StreamParser:
    """Parses the inbound messages of one Media Stream, in order."""

    def __init__(
        self,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.max_gap_bytes = MAX_GAP_MS * SAMPLE_RATE // 1000
        self.start: Start | None = None
        self.stopped = False
        self._last_sequence = 0
        self._last_chunk = 0
        self._next_timestamp_ms: int | None = None
        #: Messages whose sequenceNumber skipped ahead, media chunks lost (filled with silence),
        #: and jumps in the media too long to fill (see MAX_GAP_MS).
        self.sequence_gaps = 0
        self.lost_chunks = 0
        self.long_gaps = 0
        self._pending_marks: set[str] | None = None

    def expect_marks(self, pending: set[str]) -> None:
        """Check each `mark` echo against `pending`, the names sent and not yet echoed (the set a
        `StreamWriter` keeps): an echo of any other name raises ProtocolError("unknown_mark")."""
        self._pending_marks = pending

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start else None

    def parse(self, message: str | bytes) -> Event:
        """Parse one WebSocket message. Text frames arrive as `str`; a `bytes` frame is an error."""
        if not isinstance(message, str):
            raise ProtocolError("binary_frame", f"binary WebSocket frame of {len(message)} bytes; Twilio sends text")
        if len(message) > self.max_message_bytes:
            raise ProtocolError("oversized_message", f"{len(message)} bytes > limit {self.max_message_bytes}")
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("bad_json", f"not JSON ({exc})") from None
        if not isinstance(msg, dict):
            raise ProtocolError("bad_json", f"not a JSON object but {type(msg).__name__}")
        event = msg.get("event")
        if event is None:
            raise ProtocolError("missing_field", "message: no 'event'")
        if event == "media":  # by far the most frequent: first
            return self._media(msg)
        if event == "connected":
            return Connected(protocol=str(msg.get("protocol", "")), version=str(msg.get("version", "")))
        if event == "start":
            return self._start(msg)
        if event == "mark":
            seq = self._common(msg, "mark")
            name = _str(_obj(msg, "mark", "mark"), "name", "mark.mark")
            pending = self._pending_marks
            if pending is not None:
                if name not in pending:
                    raise ProtocolError("unknown_mark", f"mark: {name!r:.40} was never sent, or was echoed already")
                pending.discard(name)
            return Mark(sequence=seq, name=name)
        if event == "dtmf":
            seq = self._common(msg, "dtmf")
            body = _obj(msg, "dtmf", "dtmf")
            digit = _str(body, "digit", "dtmf.dtmf")
            if digit not in DTMF_DIGITS:
                raise ProtocolError("bad_field", f"dtmf: digit {digit!r:.10} is not one of 0-9 * # A-D")
            return Dtmf(sequence=seq, digit=digit, track=str(body.get("track", "inbound_track")))
        if event == "stop":
            seq = self._common(msg, "stop")
            body = msg.get("stop")
            body = body if isinstance(body, dict) else {}
            self.stopped = True
            return Stop(
                sequence=seq,
                account_sid=str(body.get("accountSid", self.start.account_sid if self.start else "")),
                call_sid=str(body.get("callSid", self.start.call_sid if self.start else "")),
            )
        raise ProtocolError("unknown_event", f"event {event!r:.40} is not one Twilio sends")

    # Each message after `start` carries the stream's sid and the shared sequence counter.
    def _common(self, msg: Mapping[str, Any], where: str) -> int:
        if self.start is None:
            raise ProtocolError(f"{where}_before_start", f"'{where}' before 'start'")
        if self.stopped:
            raise ProtocolError("after_stop", f"'{where}' after 'stop'")
        sid = msg.get("streamSid")
        if sid is None:
            raise ProtocolError("missing_field", f"{where}: no 'streamSid'")
        if sid != self.start.stream_sid:
            raise ProtocolError("stream_sid_mismatch", f"{where}: streamSid {sid!r:.40} is not this stream's")
        seq = _int(msg, "sequenceNumber", where)
        if seq > self._last_sequence + 1:
            self.sequence_gaps += 1
        if seq > self._last_sequence:
            self._last_sequence = seq
        return seq

    def _start(self, msg: Mapping[str, Any]) -> Start:
        if self.start is not None:
            raise ProtocolError("duplicate_start", "a second 'start' on one stream")
        body = _obj(msg, "start", "start")
        stream_sid = _str(body, "streamSid", "start.start") if "streamSid" in body else _str(msg, "streamSid", "start")
        call_sid = _str(body, "callSid", "start.start")
        fmt = _obj(body, "mediaFormat", "start.start")
        encoding = fmt.get("encoding")
        try:
            rate = int(fmt.get("sampleRate"))  # type: ignore[arg-type]
            channels = int(fmt.get("channels", 1))
        except (TypeError, ValueError):
            raise ProtocolError(
                "media_format", f"start: mediaFormat {fmt!r:.100} lacks a numeric sampleRate; only audio/x-mulaw 8000 Hz mono is spoken"
            ) from None
        if encoding != MULAW_ENCODING or rate != SAMPLE_RATE or channels != 1:
            raise ProtocolError(
                "media_format",
                f"start: mediaFormat {encoding!r:.30} {rate} Hz x{channels}; only audio/x-mulaw 8000 Hz mono is spoken",
            )
        params = body.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("bad_field", "start: 'customParameters' is not an object")
        tracks = body.get("tracks") or ["inbound"]
        if not isinstance(tracks, list):
            raise ProtocolError("bad_field", "start: 'tracks' is not a list")
        seq_raw = msg.get("sequenceNumber")
        seq = _int(msg, "sequenceNumber", "start") if seq_raw is not None else 1
        start = Start(
            sequence=seq,
            stream_sid=stream_sid,
            account_sid=str(body.get("accountSid", "")),
            call_sid=call_sid,
            tracks=tuple(str(t) for t in tracks),
            custom_parameters=MappingProxyType({str(k): str(v) for k, v in params.items()}),
            media_format=MediaFormat(encoding=encoding, sample_rate=rate, channels=channels),
        )
        self.start = start
        self._last_sequence = seq
        return start

    def _media(self, msg: Mapping[str, Any]) -> Media | DroppedMedia:
        seq = self._common(msg, "media")
        body = _obj(msg, "media", "media")
        chunk = _int(body, "chunk", "media.media")
        timestamp = _int(body, "timestamp", "media.media")
        payload_b64 = _str(body, "payload", "media.media")
        if not payload_b64:
            raise ProtocolError("empty_payload", "media: empty payload")
        # 4 base64 characters carry 3 bytes: reject before decoding anything large.
        if len(payload_b64) > (self.max_payload_bytes + 2) // 3 * 4:
            raise ProtocolError("oversized_payload", f"media: payload of ~{len(payload_b64) * 3 // 4} bytes > limit {self.max_payload_bytes}")
        try:
            payload = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("bad_base64", f"media: payload is not base64 ({exc})") from None
        if not payload:
            raise ProtocolError("empty_payload", "media: payload decodes to nothing")
        if len(payload) > self.max_payload_bytes:
            raise ProtocolError("oversized_payload", f"media: payload of {len(payload)} bytes > limit {self.max_payload_bytes}")
        track = body.get("track", "inbound")
        if track != "inbound":
            return DroppedMedia(sequence=seq, chunk=chunk, reason="track")
        last = self._last_chunk
        if chunk <= last:
            return DroppedMedia(sequence=seq, chunk=chunk, reason="duplicate" if chunk == last else "out_of_order")
        gap_bytes = skipped_ms = 0
        if chunk > last + 1 and last:
            self.lost_chunks += chunk - last - 1
            gap_bytes, skipped_ms = media_gap(chunk - last - 1, self._next_timestamp_ms, timestamp, len(payload), self.max_gap_bytes)
            self.long_gaps += skipped_ms > 0
        self._last_chunk = chunk
        self._next_timestamp_ms = timestamp + len(payload) * 1000 // SAMPLE_RATE
        return Media(sequence=seq, chunk=chunk, timestamp_ms=timestamp, track=track, payload=payload,
                     gap_bytes=gap_bytes, skipped_ms=skipped_ms)


def media_gap(lost_chunks: int, expected_ts: int | None, timestamp: int, chunk_bytes: int, max_gap_bytes: int) -> tuple[int, int]:
    """(bytes of silence to fill, ms skipped unfilled) for `lost_chunks` missing before a piece
    stamped `timestamp`, when `expected_ts` was due: judged by the timestamps when they move on,
    else by the chunks; a hole over `max_gap_bytes` is reported, never filled."""
    if expected_ts is not None and timestamp > expected_ts:
        gap_bytes = (timestamp - expected_ts) * SAMPLE_RATE // 1000
    else:  # no usable clock: assume the lost chunks were as long as this one
        gap_bytes = lost_chunks * chunk_bytes
    if gap_bytes > max_gap_bytes:
        return 0, gap_bytes * 1000 // SAMPLE_RATE
    return gap_bytes, 0


# --- building outbound messages -------------------------------------------------------------


class StreamWriter:
    """Builds the messages we send on one stream. The streamSid is escaped once, not per frame.

    `pending_marks` holds the names of the marks built and not yet echoed: give it to the
    stream's `StreamParser.expect_marks` so that echoes of names never sent are caught."""

    __slots__ = ("stream_sid", "pending_marks", "_media_prefix", "_sid_json")
    #: Outbound `media` may be any size and plays in order, so frames sent together go as one
    #: message (one JSON build, one base64, one write instead of one per 20 ms). A second at
    #: most: no bigger than what we accept from Twilio (MAX_PAYLOAD_BYTES).
    max_frames_per_message = MAX_PAYLOAD_BYTES // FRAME_BYTES

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self.pending_marks: set[str] = set()
        self._sid_json = orjson.dumps(stream_sid).decode()
        self._media_prefix = '{"event":"media","streamSid":' + self._sid_json + ',"media":{"payload":"'

    def media(self, ulaw: bytes) -> str:
        """A `media` message carrying raw 8 kHz mu-law (no file header)."""
        if not ulaw:
            raise ValueError("empty media payload")
        return self._media_prefix + binascii.b2a_base64(ulaw, newline=False).decode("ascii") + '"}}'

    def mark(self, name: str) -> str:
        self.pending_marks.add(name)
        return '{"event":"mark","streamSid":' + self._sid_json + ',"mark":{"name":' + orjson.dumps(name).decode() + "}}"

    def clear(self) -> str:
        return '{"event":"clear","streamSid":' + self._sid_json + "}"


# --- building inbound messages (what Twilio sends; used by the replay harness and tests) ----


class TwilioSender:
    """Builds the messages Twilio sends, with its counters, for the harness and tests."""

    def __init__(self, stream_sid: str, call_sid: str, account_sid: str) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        # C counters: media_utf8 runs every 20 ms of every call of a load run.
        self._next = itertools.count(1).__next__
        self._next_chunk = itertools.count(1).__next__
        self._sid_json = orjson.dumps(stream_sid).decode()
        self._media_format = (b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
                              b'"timestamp":"%d","payload":"%s"},"streamSid":' + orjson.dumps(stream_sid) + b"}")

    @staticmethod
    def connected() -> str:
        return '{"event":"connected","protocol":"Call","version":"1.0.0"}'

    def start(self, custom_parameters: Mapping[str, str] | None = None) -> str:
        return orjson.dumps(
            {
                "event": "start",
                "sequenceNumber": str(self._next()),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": MULAW_ENCODING, "sampleRate": SAMPLE_RATE, "channels": 1},
                    "customParameters": dict(custom_parameters or {}),
                },
                "streamSid": self.stream_sid,
            }
        ).decode()

    def media(self, ulaw: bytes, timestamp_ms: int) -> str:
        return self.media_utf8(ulaw, timestamp_ms).decode()

    def media_utf8(self, ulaw: bytes, timestamp_ms: int) -> bytes:
        """`media()` as the UTF-8 bytes a text frame carries: a load run sends one per call every
        20 ms, built in one step with no str between."""
        return self._media_format % (self._next(), self._next_chunk(), timestamp_ms,
                                     binascii.b2a_base64(ulaw, newline=False))

    def dtmf(self, digit: str) -> str:
        return orjson.dumps(
            {"event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": str(self._next()),
             "dtmf": {"track": "inbound_track", "digit": digit}}
        ).decode()

    def mark(self, name: str) -> str:
        return orjson.dumps(
            {"event": "mark", "sequenceNumber": str(self._next()), "streamSid": self.stream_sid, "mark": {"name": name}}
        ).decode()

    def stop(self) -> str:
        return orjson.dumps(
            {"event": "stop", "sequenceNumber": str(self._next()), "streamSid": self.stream_sid,
             "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}
        ).decode()


# --- parsing what we send (the harness plays Twilio's side) ---------------------------------


class OutMedia(NamedTuple):
    payload: bytes


class OutMark(NamedTuple):
    name: str


class OutClear(NamedTuple):
    pass


OutboundEvent = Union[OutMedia, OutMark, OutClear]


def load_object(message: str | bytes) -> dict:
    """One JSON text message as an object, or the ProtocolError that says why not."""
    if not isinstance(message, str):
        raise ProtocolError("binary_frame", "binary WebSocket frame where JSON text was expected")
    try:
        msg = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "not a JSON object")
    return msg


def carrier_start(sequence: int, call_id: str, stream_id: str, params: Mapping[str, str]) -> Start:
    """The `Start` of a carrier that names no media format of its own (its codec has turned the
    audio into 8 kHz mu-law already): AudioSocket, Asterisk's WebSocket channel, Vonage."""
    return Start(
        sequence=sequence, stream_sid=stream_id, account_sid="", call_sid=call_id, tracks=("inbound",),
        custom_parameters=MappingProxyType(dict(params)),
        media_format=MediaFormat(encoding=MULAW_ENCODING, sample_rate=SAMPLE_RATE, channels=1),
    )


def parse_outbound(message: str | bytes, stream_sid: str | None = None) -> OutboundEvent:
    """Parse a message a bot sends to Twilio, as Twilio would, raising ProtocolError."""
    msg = load_object(message)
    event = msg.get("event")
    sid = msg.get("streamSid")
    if sid is None:
        raise ProtocolError("missing_field", f"{event}: no 'streamSid'")
    if stream_sid is not None and sid != stream_sid:
        raise ProtocolError("stream_sid_mismatch", f"{event}: streamSid {sid!r:.40} is not this stream's")
    if event == "media":
        payload_b64 = _str(_obj(msg, "media", "media"), "payload", "media.media")
        try:
            payload = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("bad_base64", f"media: payload is not base64 ({exc})") from None
        if not payload:
            raise ProtocolError("empty_payload", "media: empty payload")
        return OutMedia(payload=payload)
    if event == "mark":
        return OutMark(name=_str(_obj(msg, "mark", "mark"), "name", "mark.mark"))
    if event == "clear":
        return OutClear()
    raise ProtocolError("unknown_event", f"event {event!r:.40} is not one Twilio accepts")
