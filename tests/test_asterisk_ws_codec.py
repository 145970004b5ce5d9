"""chan_websocket's messages on plain strings and bytes, in both control formats."""

import orjson
import pytest

from ivr.telephony.asterisk_ws import (
    CAPABILITIES, MARKS_ECHOED_ON_CLEAR, AsteriskWsParser, AsteriskWsSender, AsteriskWsWriter, FlowControl, Notice,
    OutCommand, OutMedia, parse_command,
)
from ivr.telephony.twilio import Dtmf, Mark, Media, ProtocolError, Start

FRAME = bytes(range(160))


@pytest.mark.parametrize("json_control", [False, True])
def test_a_call_parses_into_the_engines_events(json_control):
    side = AsteriskWsSender("a1b2c3", json_control=json_control, variables={"IVR_CALLER": "+15550100"})
    parser = AsteriskWsParser()
    start = parser.parse(side.media_start())
    assert isinstance(start, Start)
    assert start.call_sid == "a1b2c3"
    assert start.custom_parameters["carrier"] == "asterisk-ws"
    assert parser.json_control is json_control
    if json_control:  # channel variables reach the call as parameters
        assert start.custom_parameters["IVR_CALLER"] == "+15550100"
    media = [parser.parse(side.media(FRAME)) for _ in range(3)]
    assert all(isinstance(m, Media) for m in media)
    assert [m.timestamp_ms for m in media] == [0, 20, 40]
    assert media[0].payload == FRAME
    dtmf = parser.parse(side.dtmf("#"))
    assert isinstance(dtmf, Dtmf) and dtmf.digit == "#"
    mark = parser.parse(side.mark_processed("t1p0"))
    assert isinstance(mark, Mark) and mark.name == "t1p0"
    assert parser.parse(side.event("MEDIA_XOFF")) == FlowControl(paused=True)
    assert parser.parse(side.event("MEDIA_XON")) == FlowControl(paused=False)
    notice = parser.parse(side.event("QUEUE_DRAINED"))
    assert isinstance(notice, Notice) and notice.event == "QUEUE_DRAINED"


def test_the_plain_media_start_line_as_asterisk_prints_it():
    line = (
        "MEDIA_START connection_id:e226e283-c90a-4ea9-9e37-389000b9ef47 channel:WebSocket/connection1-00000001 "
        "channel_id:1761234567.12 format:ulaw optimal_frame_size:160 ptime:20"
    )
    start = AsteriskWsParser().parse(line)
    assert start.call_sid == "1761234567.12"
    assert start.stream_sid == "e226e283-c90a-4ea9-9e37-389000b9ef47"
    assert start.custom_parameters["channel"] == "WebSocket/connection1-00000001"


def test_a_mark_id_with_a_colon_survives_the_plain_format():
    parser = AsteriskWsParser()
    parser.parse(AsteriskWsSender("c").media_start())
    assert parser.parse("MEDIA_MARK_PROCESSED turn:3").name == "turn:3"


@pytest.mark.parametrize(
    "messages, kind",
    [
        ([FRAME], "media_before_start"),
        (["DTMF_END digit:1 channel_id:x"], "dtmf_end_before_start"),
        (["MEDIA_START connection_id:x channel_id:x format:slin16 optimal_frame_size:640 ptime:20"], "media_format"),
        (["MEDIA_START connection_id:x channel_id:x format:ulaw optimal_frame_size:320 ptime:20"], "media_format"),
        (["MEDIA_START format:ulaw optimal_frame_size:160 ptime:20"], "missing_field"),
        (["{not json"], "bad_json"),
        (['{"no_event": 1}'], "missing_field"),
        ([AsteriskWsSender("c").media_start(), AsteriskWsSender("c").media_start()], "duplicate_start"),
        ([AsteriskWsSender("c").media_start(), b""], "empty_payload"),
        ([AsteriskWsSender("c").media_start(), "DTMF_END digit:x channel_id:c"], "bad_field"),
        ([AsteriskWsSender("c").media_start(), "MEDIA_MARK_PROCESSED"], "missing_field"),
    ],
)
def test_malformed_messages_raise_a_named_protocol_error(messages, kind):
    parser = AsteriskWsParser()
    with pytest.raises(ProtocolError) as err:
        for m in messages:
            parser.parse(m)
    assert err.value.kind == kind


@pytest.mark.parametrize("json_control", [False, True])
def test_commands_in_the_format_asterisk_used_and_read_back_as_asterisk_would(json_control):
    writer = AsteriskWsWriter(json_control=json_control)
    assert CAPABILITIES.clear and CAPABILITIES.marks and not MARKS_ECHOED_ON_CLEAR
    assert parse_command(writer.media(FRAME), json_control) == OutMedia(FRAME)
    assert parse_command(writer.mark("t2p1"), json_control) == OutCommand("MARK_MEDIA", "t2p1")
    assert parse_command(writer.clear(), json_control) == OutCommand("FLUSH_MEDIA", None)
    assert parse_command(writer.hangup(), json_control) == OutCommand("HANGUP", None)
    if json_control:
        assert orjson.loads(writer.mark("t2p1")) == {"command": "MARK_MEDIA", "correlation_id": "t2p1"}
    else:
        assert writer.mark("t2p1") == "MARK_MEDIA t2p1"


def test_a_command_longer_than_asterisk_accepts_is_refused_here():
    with pytest.raises(ValueError):
        AsteriskWsWriter().mark("x" * 200)
    with pytest.raises(ValueError):
        AsteriskWsWriter().mark("two words")
