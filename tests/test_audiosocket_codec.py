"""The AudioSocket codec on plain bytes: framing across reads, events, errors, the bot's side."""

import uuid

import pytest
from hypothesis import given, strategies as st

from ivr.audio import pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony.audiosocket import (
    CAPABILITIES, AsteriskSender, AudioSocketError, AudioSocketParser, AudioSocketWriter, BotStreamParser,
    OutAudio, OutHangup,
)
from ivr.telephony.twilio import Dtmf, Media, ProtocolError, Start, Stop

CALL = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
PCM_FRAME = bytes(range(256)) + bytes(64)  # 320 bytes: 20 ms of 16-bit PCM at 8 kHz


def call_bytes(frames: int = 3) -> bytes:
    side = AsteriskSender(CALL)
    return side.uuid() + b"".join(side.audio(PCM_FRAME) for _ in range(frames)) + side.dtmf("7") + side.hangup()


def test_a_call_parses_into_start_media_dtmf_stop():
    parser = AudioSocketParser()
    events = parser.feed(call_bytes(3))
    assert [type(e) for e in events] == [Start, Media, Media, Media, Dtmf, Stop]
    start = events[0]
    assert start.call_sid == start.stream_sid == str(CALL)
    assert start.custom_parameters["carrier"] == "audiosocket"
    media = events[1:4]
    assert [m.chunk for m in media] == [1, 2, 3]
    assert [m.timestamp_ms for m in media] == [0, 20, 40]
    assert media[0].payload == pcm16_to_ulaw(PCM_FRAME)
    assert len(media[0].payload) == 160
    assert events[4].digit == "7"
    assert events[5].call_sid == str(CALL)
    assert parser.stopped


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_any_split_of_the_stream_gives_the_same_events(cuts):
    data = call_bytes(4)
    whole = AudioSocketParser().feed(data)
    parser = AudioSocketParser()
    got, pos = [], 0
    for cut in cuts:
        got += parser.feed(data[pos : pos + cut])
        pos += cut
    got += parser.feed(data[pos:])
    assert [type(e) for e in got] == [type(e) for e in whole]
    assert [getattr(e, "payload", None) for e in got] == [getattr(e, "payload", None) for e in whole]


def test_nothing_is_parsed_after_the_hang_up():
    parser = AudioSocketParser()
    side = AsteriskSender(CALL)
    events = parser.feed(side.uuid() + side.hangup() + side.audio(PCM_FRAME))
    assert [type(e) for e in events] == [Start, Stop]
    assert parser.feed(side.audio(PCM_FRAME)) == []


def test_caller_hang_up_error_bit_ends_the_call_other_errors_do_not():
    side = AsteriskSender(CALL)
    parser = AudioSocketParser()
    events = parser.feed(side.uuid() + side.error(0x02))
    assert isinstance(events[1], AudioSocketError)
    assert "forwarded" in events[1].description
    assert not parser.stopped
    events = parser.feed(side.error(0x01))
    assert isinstance(events[0], Stop)


@pytest.mark.parametrize(
    "data, kind",
    [
        (AsteriskSender(CALL).audio(PCM_FRAME), "media_before_start"),
        (AsteriskSender(CALL).dtmf("1"), "dtmf_before_start"),
        (bytes((0x01, 0x00, 0x04)) + b"abcd", "bad_field"),
        (AsteriskSender(CALL).uuid() + bytes((0x10, 0x00, 0x03)) + b"abc", "bad_field"),
        (AsteriskSender(CALL).uuid() + bytes((0x12, 0x01, 0x40)) + bytes(320), "media_format"),
        (AsteriskSender(CALL).uuid() + bytes((0x42, 0x00, 0x00)), "unknown_event"),
        (AsteriskSender(CALL).uuid() + AsteriskSender(CALL).uuid(), "duplicate_start"),
        (AsteriskSender(CALL).uuid() + bytes((0x10, 0xFF, 0xFF)), "oversized_payload"),
        (AsteriskSender(CALL).uuid() + AsteriskSender.dtmf("x"), "bad_field"),
    ],
)
def test_malformed_messages_raise_a_named_protocol_error(data, kind):
    with pytest.raises(ProtocolError) as err:
        AudioSocketParser().feed(data)
    assert err.value.kind == kind


def test_an_oversized_header_is_refused_before_its_payload_arrives():
    parser = AudioSocketParser()
    parser.feed(AsteriskSender(CALL).uuid())
    with pytest.raises(ProtocolError):
        parser.feed(bytes((0x10, 0xFF, 0xFF)))  # only the header: nothing buffered waits for 64 KiB


def test_the_writer_sends_linear_pcm_and_a_hang_up_the_bot_side_reads_back():
    ulaw = pcm16_to_ulaw(PCM_FRAME)
    writer = AudioSocketWriter()
    assert writer.capabilities == CAPABILITIES
    assert not CAPABILITIES.clear and not CAPABILITIES.marks
    data = writer.media(ulaw) + writer.media(ulaw) + writer.hangup()
    back = BotStreamParser()
    out = back.feed(data[:5]) + back.feed(data[5:])
    assert out == [OutAudio(ulaw_to_pcm16(ulaw)), OutAudio(ulaw_to_pcm16(ulaw)), OutHangup()]
    assert len(out[0].pcm16) == 320
