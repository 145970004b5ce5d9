import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import twilio_messages as tm
from ivr.telephony.twilio import (
    Connected,
    DroppedMedia,
    Dtmf,
    Mark,
    Media,
    OutClear,
    OutMark,
    OutMedia,
    ProtocolError,
    Start,
    Stop,
    StreamParser,
    StreamWriter,
    TwilioSender,
    parse_outbound,
)


def started() -> StreamParser:
    p = StreamParser()
    assert isinstance(p.parse(tm.CONNECTED), Connected)
    p.parse(tm.start())
    return p


def test_a_whole_call_parses_into_typed_events():
    p = StreamParser()
    c = p.parse(tm.CONNECTED)
    assert c == Connected(protocol="Call", version="1.0.0")
    s = p.parse(tm.start(params={"From": "+15551234567", "lang": "en"}))
    assert isinstance(s, Start)
    assert (s.stream_sid, s.call_sid, s.account_sid) == (tm.STREAM_SID, tm.CALL_SID, tm.ACCOUNT_SID)
    assert s.custom_parameters == {"From": "+15551234567", "lang": "en"}
    assert s.media_format.sample_rate == 8000 and s.tracks == ("inbound",)
    m = p.parse(tm.media(2, 1, 5, b"\x01\x02" * 80))
    assert isinstance(m, Media)
    assert (m.sequence, m.chunk, m.timestamp_ms, m.payload, m.gap_bytes) == (2, 1, 5, b"\x01\x02" * 80, 0)
    assert p.parse(tm.dtmf(3, "5")) == Dtmf(sequence=3, digit="5", track="inbound_track")
    assert p.parse(tm.mark(4, "bot-1")) == Mark(sequence=4, name="bot-1")
    st_ = p.parse(tm.stop(5))
    assert st_ == Stop(sequence=5, account_sid=tm.ACCOUNT_SID, call_sid=tm.CALL_SID)
    with pytest.raises(AttributeError):
        m.chunk = 9  # events are immutable


def test_custom_parameters_are_read_only():
    s = StreamParser().parse(tm.start())
    with pytest.raises(TypeError):
        s.custom_parameters["From"] = "x"


def test_frames_of_any_whole_size_are_accepted():
    p = started()
    for i, n in enumerate((1, 80, 160, 161, 320, 8000), start=1):
        ev = p.parse(tm.media(i + 1, i, 20 * i, b"\x55" * n))
        assert isinstance(ev, Media) and len(ev.payload) == n


def bad(p: StreamParser, message, kind: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        p.parse(message)
    assert info.value.kind == kind, info.value
    return info.value


@pytest.mark.parametrize(
    "message,kind",
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"sequenceNumber": "2"}', "missing_field"),
        ('{"event": "hello"}', "unknown_event"),
        (tm.media(2, 1, 0, payload="@@not base64@@"), "bad_base64"),
        (tm.media(2, 1, 0, payload="AAA"), "bad_base64"),
        (tm.media(2, 1, 0, payload=""), "empty_payload"),
        (tm.media(2, 1, 0, payload=b"\xff" * 8001), "oversized_payload"),
        (tm.media(2, 1, 0, stream_sid="MZother"), "stream_sid_mismatch"),
        (tm.media("two", 1, 0), "bad_field"),
        (tm.media(2, "-1", 0), "bad_field"),
        (json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": tm.STREAM_SID}), "missing_field"),
        (json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": tm.STREAM_SID, "media": {"chunk": "1", "timestamp": "0"}}), "missing_field"),
        (json.dumps({"event": "media", "sequenceNumber": "2", "media": {}}), "missing_field"),
        (json.dumps({"event": "mark", "sequenceNumber": "2", "streamSid": tm.STREAM_SID, "mark": {}}), "missing_field"),
        (tm.dtmf(2, "x"), "bad_field"),
        (tm.start(), "duplicate_start"),
        (b'{"event":"media"}', "binary_frame"),
        ("x" * 70000, "oversized_message"),
    ],
)
def test_each_malformed_message_raises_one_precise_error(message, kind):
    err = bad(started(), message, kind)
    assert err.kind in str(err)


@pytest.mark.parametrize(
    "fmt",
    [
        {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
        {"encoding": "audio/x-mulaw"},
    ],
)
def test_media_format_other_than_mulaw_8k_mono_is_refused(fmt):
    p = StreamParser()
    err = bad(p, tm.start(media_format=fmt), "media_format")
    assert "audio/x-mulaw 8000 Hz mono" in str(err)
    assert p.start is None


def test_media_before_start_and_after_stop():
    p = StreamParser()
    bad(p, tm.media(2, 1, 0), "media_before_start")
    bad(p, tm.mark(2, "x"), "mark_before_start")
    p.parse(tm.start())
    p.parse(tm.stop(2))
    bad(p, tm.media(3, 1, 0), "after_stop")


def test_the_parser_survives_errors_and_goes_on():
    p = started()
    bad(p, "{", "bad_json")
    assert isinstance(p.parse(tm.media(2, 1, 0)), Media)


def test_lost_frames_are_counted_and_measured_for_silence():
    p = started()
    p.parse(tm.media(2, 1, 0))
    p.parse(tm.media(3, 2, 20))
    ev = p.parse(tm.media(6, 5, 80))  # chunks 3 and 4 (40 ms) never came
    assert isinstance(ev, Media) and ev.gap_bytes == 320
    assert p.lost_chunks == 2 and p.sequence_gaps == 1


def test_gap_follows_the_timestamps_when_frames_vary_in_size():
    p = started()
    p.parse(tm.media(2, 1, 0, b"\xff" * 80))  # 10 ms
    ev = p.parse(tm.media(4, 3, 30, b"\xff" * 80))  # one frame lost, next due at 10 ms
    assert ev.gap_bytes == 160


@pytest.mark.parametrize("chunk, timestamp, skipped_ms", [
    (3, 3_600_000, 3_599_980),  # the clock jumps an hour
    (10**17, 20, (10**17 - 2) * 20),  # the chunk counter jumps, the clock says nothing was lost
])
def test_a_jump_too_long_to_be_lost_frames_is_reported_not_filled(chunk, timestamp, skipped_ms):
    p = started()
    p.parse(tm.media(2, 1, 0))
    ev = p.parse(tm.media(3, chunk, timestamp))
    assert isinstance(ev, Media) and ev.gap_bytes == 0 and ev.skipped_ms == skipped_ms
    assert p.long_gaps == 1
    ev = p.parse(tm.media(4, chunk + 1, timestamp + 20))
    assert ev.gap_bytes == 0 and ev.skipped_ms == 0  # the stream goes on from there


def test_a_gap_up_to_the_limit_is_still_filled():
    from ivr.telephony.twilio import MAX_GAP_MS

    p = started()
    p.parse(tm.media(2, 1, 0))
    ev = p.parse(tm.media(3, 3, 20 + MAX_GAP_MS))
    assert ev.gap_bytes == MAX_GAP_MS * 8 and ev.skipped_ms == 0


def test_mark_echoes_are_checked_against_the_marks_sent():
    p = started()
    writer = StreamWriter(tm.STREAM_SID)
    p.expect_marks(writer.pending_marks)
    writer.mark("t1-p0")
    assert p.parse(tm.mark(2, "t1-p0")) == Mark(sequence=2, name="t1-p0")
    bad(p, tm.mark(3, "t1-p0"), "unknown_mark")  # echoed already
    bad(p, tm.mark(4, "never-sent"), "unknown_mark")
    assert writer.pending_marks == set()


def test_late_and_repeated_frames_are_dropped_not_played():
    p = started()
    p.parse(tm.media(2, 1, 0))
    p.parse(tm.media(4, 3, 40))
    late = p.parse(tm.media(3, 2, 20))
    assert late == DroppedMedia(sequence=3, chunk=2, reason="out_of_order")
    again = p.parse(tm.media(5, 3, 40))
    assert again.reason == "duplicate"
    other = p.parse(tm.media(6, 4, 60, track="outbound"))
    assert other.reason == "track"


def test_integer_numbers_are_accepted_too():
    p = started()
    msg = json.loads(tm.media(2, 1, 0))
    msg["sequenceNumber"], msg["media"]["chunk"], msg["media"]["timestamp"] = 2, 1, 0
    assert isinstance(p.parse(json.dumps(msg)), Media)


def test_outbound_messages_have_twilios_shape():
    w = StreamWriter(tm.STREAM_SID)
    m = json.loads(w.media(b"\x00\xff" * 80))
    assert m == {"event": "media", "streamSid": tm.STREAM_SID, "media": {"payload": base64.b64encode(b"\x00\xff" * 80).decode()}}
    assert json.loads(w.mark('say "hi"\n')) == {"event": "mark", "streamSid": tm.STREAM_SID, "mark": {"name": 'say "hi"\n'}}
    assert json.loads(w.clear()) == {"event": "clear", "streamSid": tm.STREAM_SID}
    with pytest.raises(ValueError):
        w.media(b"")


def test_outbound_parser_reads_what_the_writer_writes():
    w = StreamWriter(tm.STREAM_SID)
    assert parse_outbound(w.media(b"\x01" * 160), tm.STREAM_SID) == OutMedia(b"\x01" * 160)
    assert parse_outbound(w.mark("m1"), tm.STREAM_SID) == OutMark("m1")
    assert parse_outbound(w.clear(), tm.STREAM_SID) == OutClear()
    with pytest.raises(ProtocolError) as info:
        parse_outbound(StreamWriter("MZx").clear(), tm.STREAM_SID)
    assert info.value.kind == "stream_sid_mismatch"


def test_twilio_sender_round_trips_through_the_parser():
    s = TwilioSender(tm.STREAM_SID, tm.CALL_SID, tm.ACCOUNT_SID)
    p = StreamParser()
    events = [p.parse(m) for m in (s.connected(), s.start({"a": "b"}), s.media(b"\x7f" * 160, 0), s.media(b"\x7f" * 160, 20), s.dtmf("#"), s.mark("x"), s.stop())]
    assert [type(e).__name__ for e in events] == ["Connected", "Start", "Media", "Media", "Dtmf", "Mark", "Stop"]
    assert [getattr(e, "sequence", None) for e in events] == [None, 1, 2, 3, 4, 5, 6]
    assert p.sequence_gaps == 0 and p.lost_chunks == 0


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_nothing_but_protocol_errors_escape_the_parser(junk):
    p = started()
    try:
        p.parse(junk)
    except ProtocolError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@given(st.sampled_from(["media", "start", "mark", "dtmf", "stop", "connected"]), st.dictionaries(st.sampled_from(["sequenceNumber", "streamSid", "media", "start", "mark", "dtmf", "stop", "x"]), json_values, max_size=6))
def test_structurally_wrong_messages_raise_protocol_errors_only(event, fields):
    p = started()
    try:
        p.parse(json.dumps({"event": event, **fields}))
    except ProtocolError:
        pass
