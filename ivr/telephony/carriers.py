"""The carriers `ivr serve` speaks, as one table: each one's route, codec and capabilities.

Twilio's Media Streams arrive on `/media`; the others on a route of their own beside it, and
Asterisk's AudioSocket on a TCP port (`--audiosocket-port`). The server reads every one of them
with the same loop (ivr.server) into the same events, and the conversation engine learns only
what the carrier can do (`has_clear`, `has_marks`, and its writer's `max_frames_per_message`:
how many 20 ms frames one audio message may carry), never which carrier it is.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ivr.telephony import asterisk_ws, audiosocket, exotel, json_stream, plivo, telnyx, vonage
from ivr.telephony.twilio import Start, StreamParser, StreamWriter


class Carrier(NamedTuple):
    name: str
    #: The WebSocket route (empty for AudioSocket, which is TCP).
    path: str
    #: (max message bytes) -> a parser with `parse(raw) -> event` and `start`.
    parser: Callable[[int], Any]
    #: (the call's Start, its parser) -> a writer with media/mark/clear (and flush, hangup).
    writer: Callable[[Start, Any], Any]
    has_clear: bool
    has_marks: bool
    #: The most audio sent ahead of the caller's ear (None: IVR_PLAYOUT_LEAD_MS). A carrier with
    #: no clear plays all it is sent, so a barge-in stops only as fast as this runs out.
    max_lead_ms: int | None = None
    #: (the call's Start) -> the id its call control knows the call by (ivr.telephony.control).
    control_id: Callable[[Start], str] = lambda start: start.call_sid


def _dialect(d: json_stream.Dialect) -> Callable[[int], Any]:
    return lambda limit: json_stream.DialectParser(d, max_message_bytes=limit)


CARRIERS: dict[str, Carrier] = {c.name: c for c in (
    Carrier("twilio", "/media", lambda limit: StreamParser(max_message_bytes=limit),
            lambda start, parser: StreamWriter(start.stream_sid), True, True),
    Carrier("telnyx", "/media/telnyx", _dialect(telnyx.DIALECT), lambda start, parser: telnyx.TelnyxWriter(),
            telnyx.CAPABILITIES.clear, telnyx.CAPABILITIES.marks),
    Carrier("plivo", "/media/plivo", _dialect(plivo.DIALECT), lambda start, parser: plivo.PlivoWriter(start.stream_sid),
            plivo.CAPABILITIES.clear, plivo.CAPABILITIES.marks),
    Carrier("exotel", "/media/exotel", _dialect(exotel.DIALECT), lambda start, parser: exotel.ExotelWriter(start.stream_sid),
            exotel.CAPABILITIES.clear, exotel.CAPABILITIES.marks),
    Carrier("vonage", "/media/vonage", lambda limit: vonage.VonageParser(),
            lambda start, parser: vonage.VonageWriter(parser.rate), vonage.CAPABILITIES.clear, vonage.CAPABILITIES.marks),
    Carrier("asterisk-ws", "/media/asterisk", lambda limit: asterisk_ws.AsteriskWsParser(),
            lambda start, parser: asterisk_ws.AsteriskWsWriter(parser.json_control),
            asterisk_ws.CAPABILITIES.clear, asterisk_ws.CAPABILITIES.marks,
            control_id=asterisk_ws.caller_channel),
    Carrier("audiosocket", "", lambda limit: audiosocket.AudioSocketParser(),
            lambda start, parser: audiosocket.AudioSocketWriter(), audiosocket.CAPABILITIES.clear,
            audiosocket.CAPABILITIES.marks, max_lead_ms=audiosocket.MAX_LEAD_MS),
)}
