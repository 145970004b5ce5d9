"""Asterisk AudioSocket, sans I/O: a TCP byte stream <-> the call events the engine speaks.

AudioSocket is Asterisk's simplest media transport (the `AudioSocket()` dialplan application and
`chan_audiosocket`). Asterisk connects to us over TCP; every message is a three-byte header, one
byte of kind and a two-byte big-endian payload length, then the payload:

| kind | payload |
|---|---|
| `0x00` | none: the call is over (closing the socket says the same) |
| `0x01` | the call's UUID, 16 bytes, always the first message |
| `0x03` | one ASCII DTMF digit |
| `0x10` | signed 16-bit little-endian PCM, 8 kHz mono (320 bytes = 20 ms) |
| `0x11`-`0x18` | the same at 12, 16, 24, 32, 44.1, 48, 96, 192 kHz (newer Asterisk only) |
| `0xff` | an error; Asterisk's own codes are bit flags: `0x01` the caller hung up, `0x02` a frame could not be forwarded, `0x04` out of memory |

Checked against Asterisk's AudioSocket protocol page (docs.asterisk.org, Configuration /
Channel-Drivers / AudioSocket) and the protocol definition in the CyCoreSystems/audiosocket
README, which lists the higher-rate kinds and the error bits. Not confirmed against a running
Asterisk (none can be reached here). Only 8 kHz audio is accepted: a telephone call is 8 kHz,
and the dialplan application sends `0x10` unless told otherwise; any other rate is a clear
protocol error rather than audio played at the wrong speed.

There is no queue on Asterisk's side to clear and no mark to echo: Asterisk plays each audio
message as it arrives. The engine therefore paces the bot's audio in real time and stops a
barge-in by no longer sending (see `CAPABILITIES`).

The parser turns bytes into the same typed events as the Twilio codec (`Start`, `Media`, `Dtmf`,
`Stop`), so the engine never learns which carrier is on the line. Audio is turned into mu-law on
the way in and out of linear PCM on the way out: the engine speaks 8 kHz mu-law, and a G.711
conversion of one 20 ms frame costs about a microsecond.
"""

from __future__ import annotations

import struct
import uuid
from typing import NamedTuple

from ivr.audio import SAMPLE_RATE, pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony.twilio import DTMF_DIGITS, Dtmf, Media, ProtocolError, Start, Stop, carrier_start

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_AUDIO = 0x10
KIND_ERROR = 0xFF
#: Audio at rates other than 8 kHz, by kind, for the error message.
OTHER_RATE_KINDS = {0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100, 0x16: 48000, 0x17: 96000, 0x18: 192000}
#: Asterisk's error bits (the payload of a 0xff message).
ERROR_CALLER_HUNG_UP = 0x01
ERROR_FRAME_FORWARDING = 0x02
ERROR_MEMORY = 0x04

HEADER = struct.Struct(">BH")
#: The most audio one message may carry: one second at 8 kHz. Asterisk sends 20 ms.
MAX_AUDIO_BYTES = SAMPLE_RATE * 2
#: Bytes of one 20 ms frame of 16-bit PCM at 8 kHz.
PCM_FRAME_BYTES = SAMPLE_RATE * 2 // 50

CARRIER = "audiosocket"


class Capabilities(NamedTuple):
    """What the carrier's side of the line can do, as the engine needs to know it."""

    clear: bool  #: it holds a queue of our audio that a message can drop
    marks: bool  #: it tells us when the audio before a named point has played


CAPABILITIES = Capabilities(clear=False, marks=False)
#: Asterisk writes each audio message to the call as it arrives, with no queue of its own to
#: absorb a burst: ivr sends at most two frames ahead, which is also all a barge-in can't recall.
MAX_LEAD_MS = 40


class AudioSocketError(NamedTuple):
    """A 0xff message that is not a hang-up: logged, and the call goes on where it can."""

    code: int
    description: str


def describe_error(code: int | None) -> str:
    if code is None:
        return "an error with no code"
    names = []
    if code & ERROR_CALLER_HUNG_UP:
        names.append("the caller hung up")
    if code & ERROR_FRAME_FORWARDING:
        names.append("a frame could not be forwarded")
    if code & ERROR_MEMORY:
        names.append("Asterisk ran out of memory")
    return ", ".join(names) or f"application error code 0x{code:02x}"


class AudioSocketParser:
    """Parses the bytes Asterisk sends on one AudioSocket connection, in order.

    `feed()` takes whatever a socket read returned (a message may be split across reads or many
    may arrive in one) and returns the complete events it finished. A malformed message raises
    `ProtocolError`; since the framing itself can no longer be trusted after a bad header, the
    connection should then be closed.
    """

    def __init__(self, max_audio_bytes: int = MAX_AUDIO_BYTES) -> None:
        self.max_audio_bytes = max_audio_bytes
        self.start: Start | None = None
        self.stopped = False
        self._buffer = bytearray()
        self._sequence = 0
        self._chunk = 0
        self._timestamp_ms = 0

    def feed(self, data: bytes) -> list:
        if self.stopped:
            return []
        buffer = self._buffer
        buffer += data
        events = []
        offset = 0
        size = len(buffer)
        while size - offset >= 3:
            kind, length = HEADER.unpack_from(buffer, offset)
            if kind == KIND_AUDIO and length > self.max_audio_bytes:
                raise ProtocolError("oversized_payload", f"audio message of {length} bytes > limit {self.max_audio_bytes}")
            if size - offset - 3 < length:
                break
            payload = bytes(buffer[offset + 3 : offset + 3 + length])
            offset += 3 + length
            event = self._message(kind, payload)
            if event is not None:
                events.append(event)
            if self.stopped:
                break
        del buffer[:offset]
        if self.stopped:
            buffer.clear()
        return events

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def _message(self, kind: int, payload: bytes):
        if kind == KIND_AUDIO:  # by far the most frequent: first
            return self._audio(payload)
        if kind == KIND_UUID:
            return self._uuid(payload)
        if kind == KIND_DTMF:
            if self.start is None:
                raise ProtocolError("dtmf_before_start", "DTMF before the call's UUID")
            digit = payload.decode("ascii", "replace")
            if len(digit) != 1 or digit not in DTMF_DIGITS:
                raise ProtocolError("bad_field", f"DTMF payload {payload!r:.20} is not one of 0-9 * # A-D")
            return Dtmf(sequence=self._next(), digit=digit, track="inbound_track")
        if kind == KIND_HANGUP:
            return self._stop()
        if kind == KIND_ERROR:
            code = payload[0] if payload else None
            if code is not None and code & ERROR_CALLER_HUNG_UP:
                return self._stop()
            return AudioSocketError(code=code if code is not None else 0, description=describe_error(code))
        if kind in OTHER_RATE_KINDS:
            raise ProtocolError(
                "media_format",
                f"audio at {OTHER_RATE_KINDS[kind]} Hz (kind 0x{kind:02x}); only 8 kHz signed linear (0x10) is spoken",
            )
        raise ProtocolError("unknown_event", f"message kind 0x{kind:02x} is not one AudioSocket defines")

    def _uuid(self, payload: bytes) -> Start:
        if self.start is not None:
            raise ProtocolError("duplicate_start", "a second UUID on one connection")
        if len(payload) != 16:
            raise ProtocolError("bad_field", f"UUID payload of {len(payload)} bytes; 16 expected")
        call_id = str(uuid.UUID(bytes=payload))
        self.start = carrier_start(self._next(), call_id, call_id, {"carrier": CARRIER})
        return self.start

    def _audio(self, payload: bytes) -> Media:
        if self.start is None:
            raise ProtocolError("media_before_start", "audio before the call's UUID")
        if not payload:
            raise ProtocolError("empty_payload", "audio message with no samples")
        if len(payload) % 2:
            raise ProtocolError("bad_field", f"audio of {len(payload)} bytes is not whole 16-bit samples")
        self._chunk += 1
        timestamp = self._timestamp_ms
        self._timestamp_ms += len(payload) * 500 // SAMPLE_RATE
        return Media(
            sequence=self._next(), chunk=self._chunk, timestamp_ms=timestamp, track="inbound",
            payload=pcm16_to_ulaw(payload),
        )

    def _stop(self) -> Stop:
        self.stopped = True
        call_id = self.start.call_sid if self.start else ""
        return Stop(sequence=self._next(), account_sid="", call_sid=call_id)


# --- what we send to Asterisk ----------------------------------------------------------------


def audio_message(pcm16: bytes) -> bytes:
    """One 0x10 message of 8 kHz signed 16-bit little-endian PCM."""
    if not pcm16:
        raise ValueError("empty audio")
    return HEADER.pack(KIND_AUDIO, len(pcm16)) + pcm16


HANGUP_MESSAGE = HEADER.pack(KIND_HANGUP, 0)


class AudioSocketWriter:
    """Builds what we send on one AudioSocket connection. No marks, no clear: see the module doc."""

    __slots__ = ()
    capabilities = CAPABILITIES
    #: Asterisk plays each audio message as it arrives: one 20 ms frame each, paced.
    max_frames_per_message = 1

    @staticmethod
    def media(ulaw: bytes) -> bytes:
        return audio_message(ulaw_to_pcm16(ulaw))

    @staticmethod
    def hangup() -> bytes:
        return HANGUP_MESSAGE


# --- Asterisk's side (used by the replay harness and tests) ----------------------------------


class AsteriskSender:
    """Builds the messages Asterisk sends, for the harness and tests."""

    def __init__(self, call_id: uuid.UUID | str) -> None:
        self.call_id = call_id if isinstance(call_id, uuid.UUID) else uuid.UUID(call_id)

    def uuid(self) -> bytes:
        return HEADER.pack(KIND_UUID, 16) + self.call_id.bytes

    @staticmethod
    def audio(pcm16: bytes) -> bytes:
        return audio_message(pcm16)

    @staticmethod
    def dtmf(digit: str) -> bytes:
        raw = digit.encode("ascii")
        return HEADER.pack(KIND_DTMF, len(raw)) + raw

    @staticmethod
    def hangup() -> bytes:
        return HANGUP_MESSAGE

    @staticmethod
    def error(code: int) -> bytes:
        return HEADER.pack(KIND_ERROR, 1) + bytes((code,))


class OutAudio(NamedTuple):
    pcm16: bytes


class OutHangup(NamedTuple):
    pass


class BotStreamParser:
    """Parses what a bot sends to Asterisk, as Asterisk would: audio and hang-up only."""

    def __init__(self, max_audio_bytes: int = 65535) -> None:
        self.max_audio_bytes = max_audio_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list:
        buffer = self._buffer
        buffer += data
        out = []
        offset = 0
        while len(buffer) - offset >= 3:
            kind, length = HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset - 3 < length:
                break
            payload = bytes(buffer[offset + 3 : offset + 3 + length])
            offset += 3 + length
            if kind == KIND_AUDIO:
                if len(payload) % 2:
                    raise ProtocolError("bad_field", f"audio of {len(payload)} bytes is not whole 16-bit samples")
                out.append(OutAudio(payload))
            elif kind == KIND_HANGUP:
                out.append(OutHangup())
            else:
                raise ProtocolError("unknown_event", f"message kind 0x{kind:02x} is not one a bot sends to Asterisk")
        del buffer[:offset]
        return out
