"""Telnyx, Plivo and Exotel streams on plain strings: events, marks, writers, signatures."""

import base64
import time

import orjson
import pytest
from hypothesis import given, strategies as st

from ivr.audio import pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony import exotel, plivo, telnyx
from ivr.telephony.json_stream import Dialect, DialectParser, Notice
from ivr.telephony.twilio import Dtmf, Mark, Media, ProtocolError, Start, Stop, StreamParser, TwilioSender

FRAME = bytes(range(0, 160))


def run(parser, messages):
    return [parser.parse(m) for m in messages]


def test_telnyx_call():
    side = telnyx.TelnyxSender("32DE0DEA", "v3:call")
    parser = DialectParser(telnyx.DIALECT)
    events = run(parser, [side.connected(), side.start({"customer_id": "c1"}, caller="+13125550100", callee="+13125550101"),
                          side.media(FRAME, 0), side.media(FRAME, 20), side.dtmf("4"), side.mark("t1p0"), side.stop()])
    start = events[1]
    assert isinstance(start, Start) and start.call_sid == "v3:call" and start.stream_sid == "32DE0DEA"
    assert start.custom_parameters["customer_id"] == "c1" and start.custom_parameters["From"] == "+13125550100"
    assert [type(e) for e in events[2:]] == [Media, Media, Dtmf, Mark, Stop]
    assert events[2].payload == FRAME
    assert events[5].name == "t1p0"
    error = DialectParser(telnyx.DIALECT)
    error.parse(side.start())
    notice = error.parse('{"event":"error","payload":{"code":100003,"title":"malformed frame"}}')
    assert isinstance(notice, Notice) and notice.event == "error"


def test_telnyx_writer_messages():
    w = telnyx.TelnyxWriter()
    assert orjson.loads(w.media(FRAME)) == {"event": "media", "media": {"payload": base64.b64encode(FRAME).decode()}}
    assert orjson.loads(w.mark("m")) == {"event": "mark", "mark": {"name": "m"}}
    assert orjson.loads(w.clear()) == {"event": "clear"}
    assert telnyx.MARKS_ECHOED_ON_CLEAR


def test_telnyx_texml_answer_is_xml_with_the_stream():
    from xml.etree import ElementTree

    root = ElementTree.fromstring(telnyx.answer("wss://bot.example.com/media/telnyx", {"From": "+1 & co"}))
    stream = root.find("Start/Stream")
    assert stream.get("url") == "wss://bot.example.com/media/telnyx"
    assert stream.get("bidirectionalMode") == "rtp" and stream.get("bidirectionalCodec") == "PCMU"
    assert stream.find("Parameter").get("value") == "+1 & co"


def test_telnyx_webhook_signature_with_a_real_ed25519_key():
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    body = b'{"data":{"event_type":"call.initiated"}}'
    ts = str(int(time.time()))
    sig = base64.b64encode(key.sign(ts.encode() + b"|" + body).signature).decode()
    headers = {"telnyx-signature-ed25519": sig, "telnyx-timestamp": ts}
    assert telnyx.verify_webhook(public, headers, body)
    assert not telnyx.verify_webhook(public, headers, body + b" ")
    assert not telnyx.verify_webhook(public, {**headers, "telnyx-timestamp": str(int(ts) - 1)}, body)
    assert not telnyx.verify_webhook(public, headers, body, now=int(ts) + 301)  # replayed later
    other = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    assert not telnyx.verify_webhook(other, headers, body)
    assert not telnyx.verify_webhook(public, {}, body)


def test_plivo_call_with_checkpoints_and_extra_headers():
    side = plivo.PlivoSender("20170ada", "call-1", extra_headers="ivr_token=abc;From=+14155550100")
    parser = DialectParser(plivo.DIALECT)
    events = run(parser, [side.start(), side.media(FRAME, 0), side.dtmf("#"), side.played("t2p1"), side.cleared()])
    start = events[0]
    assert start.call_sid == "call-1" and start.stream_sid == "20170ada"
    assert start.custom_parameters["ivr_token"] == "abc" and start.custom_parameters["From"] == "+14155550100"
    assert isinstance(events[1], Media) and events[1].payload == FRAME
    assert isinstance(events[2], Dtmf) and events[2].digit == "#"
    assert isinstance(events[3], Mark) and events[3].name == "t2p1"
    assert isinstance(events[4], Notice) and events[4].event == "clearedAudio"
    assert not plivo.MARKS_ECHOED_ON_CLEAR


def test_plivo_l16_stream_becomes_mulaw():
    pcm = ulaw_to_pcm16(FRAME)
    start = orjson.loads(plivo.PlivoSender("s", "c").start())
    start["start"]["mediaFormat"]["encoding"] = "audio/x-l16"
    parser = DialectParser(plivo.DIALECT)
    parser.parse(orjson.dumps(start).decode())
    media = parser.parse(orjson.dumps({"event": "media", "sequenceNumber": 2, "streamId": "s",
                                       "media": {"payload": base64.b64encode(pcm).decode()}}).decode())
    assert media.payload == pcm16_to_ulaw(pcm) and media.timestamp_ms == 0


def test_plivo_writer_messages():
    w = plivo.PlivoWriter("s1")
    msg = orjson.loads(w.media(FRAME))
    assert msg["event"] == "playAudio"
    assert msg["media"] == {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": base64.b64encode(FRAME).decode()}
    assert orjson.loads(w.mark("cp")) == {"event": "checkpoint", "streamId": "s1", "name": "cp"}
    assert orjson.loads(w.clear()) == {"event": "clearAudio", "streamId": "s1"}


def test_plivo_xml_answer():
    from xml.etree import ElementTree

    root = ElementTree.fromstring(plivo.answer("wss://bot.example.com/media/plivo", {"ivr_token": "t"}))
    stream = root.find("Stream")
    assert stream.text == "wss://bot.example.com/media/plivo"
    assert stream.get("bidirectional") == "true" and stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    assert stream.get("extraHeaders") == "ivr_token=t"


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("url", ["https://bot.example.com/plivo/answer", "https://bot.example.com/plivo/answer?b=2&a=1"])
@pytest.mark.parametrize("params", [{}, {"CallUUID": "c-1", "From": "14155550100", "To": "14155550101"}])
def test_plivo_v3_signature_matches_the_official_sdk(method, url, params):
    from plivo.utils.signature_v3 import get_signature_v3, construct_get_url, construct_post_url

    token, nonce = "MAtokenVALUE", "12345678901234567890"
    base = construct_get_url(url, dict(params)) if method == "GET" else construct_post_url(url, dict(params))
    signature = get_signature_v3(token.encode(), base.decode(), nonce.encode()).decode()
    assert plivo.signature_base(method, url, params) == base.decode()
    assert plivo.verify_webhook(token, method, url, params, nonce, "other," + signature)
    assert not plivo.verify_webhook("wrong", method, url, params, nonce, signature)
    assert not plivo.verify_webhook(token, method, url, {**params, "x": "1"}, nonce, signature)


def test_exotel_call_in_16_bit_pcm():
    side = exotel.ExotelSender("MZ1", "CA1")
    parser = DialectParser(exotel.DIALECT)
    events = run(parser, [side.connected(), side.start({"lang": "hi"}, caller="+919876543210"),
                          side.media(FRAME * 5, 0), side.media(FRAME * 5, 100), side.dtmf("1"), side.mark("t1p0"),
                          side.stop()])
    assert events[1].call_sid == "CA1" and events[1].custom_parameters["lang"] == "hi"
    assert events[2].payload == pcm16_to_ulaw(ulaw_to_pcm16(FRAME * 5))
    assert events[3].gap_bytes == 0  # 100 ms of 16-bit audio is 100 ms, not 200
    assert [type(e) for e in events[4:]] == [Dtmf, Mark, Stop]


def test_exotel_writer_gathers_100ms_chunks_of_pcm():
    w = exotel.ExotelWriter("MZ1")
    out = [w.media(FRAME) for _ in range(11)]
    sent = [o for o in out if o is not None]
    assert len(sent) == 2
    for msg in sent:
        pcm = base64.b64decode(orjson.loads(msg)["media"]["payload"])
        assert len(pcm) == exotel.CHUNK_BYTES and len(pcm) % 320 == 0
    tail = orjson.loads(w.flush())
    assert len(base64.b64decode(tail["media"]["payload"])) == 320
    assert w.flush() is None
    w.media(FRAME)
    assert orjson.loads(w.clear()) == {"event": "clear", "stream_sid": "MZ1"}
    assert w.flush() is None  # a clear drops what was gathered
    assert orjson.loads(w.mark("m")) == {"event": "mark", "stream_sid": "MZ1", "mark": {"name": "m"}}


def test_exotel_basic_auth():
    header = "Basic " + base64.b64encode(b"key:token").decode()
    assert exotel.basic_auth_ok("key:token", header)
    assert not exotel.basic_auth_ok("key:other", header)
    assert not exotel.basic_auth_ok("key:token", None)
    assert not exotel.basic_auth_ok("key:token", "Basic !!!")


@pytest.mark.parametrize("dialect, sender", [
    (telnyx.DIALECT, lambda: telnyx.TelnyxSender("s", "c")),
    (plivo.DIALECT, lambda: plivo.PlivoSender("s", "c")),
    (exotel.DIALECT, lambda: exotel.ExotelSender("s", "c")),
])
def test_malformed_messages_raise_named_errors(dialect, sender):
    side = sender()
    cases = [
        ("{", "bad_json"), ("[1]", "bad_json"), ('{"event":"nope"}', "unknown_event"),
        (side.media(FRAME, 0) if hasattr(side, "media") else "", "media_before_start"),
    ]
    for message, kind in cases:
        with pytest.raises(ProtocolError) as err:
            DialectParser(dialect).parse(message)
        assert err.value.kind == kind
    parser = DialectParser(dialect)
    parser.parse(sender().start())
    with pytest.raises(ProtocolError) as err:
        parser.parse(b"\x00")
    assert err.value.kind == "binary_frame"


# The generic parser must agree with Twilio's own parser on Twilio's messages, ordering rules included.
TWILIO_AS_DIALECT = Dialect(
    carrier="twilio", sequence="sequenceNumber", stream_id="streamSid", call_id="callSid", account_id="accountSid",
    media_format="mediaFormat", sample_rate="sampleRate", encodings={"audio/x-mulaw": None},
    parameters=lambda msg, body: body.get("customParameters"), mark_event="mark",
    mark_name=lambda msg: msg.get("mark", {}).get("name"),
)


@given(st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=40))
def test_the_dialect_parser_orders_audio_exactly_as_twilios_parser(chunks):
    sender = TwilioSender("MZ1", "CA1", "AC1")
    messages = [sender.start()]
    made = {}
    for chunk in sorted(set(chunks)):
        made[chunk] = (chunk, (chunk - 1) * 20)
    ordered = [made[c] for c in chunks if c in made]
    # Re-send chunks in the given order (duplicates and out-of-order included).
    for chunk, ts in ordered:
        sender._chunk = chunk - 1
        messages.append(sender.media(FRAME, ts))
    ours, theirs = DialectParser(TWILIO_AS_DIALECT), StreamParser()
    for m in messages:
        a, b = ours.parse(m), theirs.parse(m)
        assert type(a).__name__ == type(b).__name__
        if isinstance(b, Media):
            assert (a.chunk, a.timestamp_ms, a.payload, a.gap_bytes) == (b.chunk, b.timestamp_ms, b.payload, b.gap_bytes)


def test_an_hour_long_jump_is_reported_not_filled_on_every_dialect():
    side = telnyx.TelnyxSender("s", "c")
    parser = DialectParser(telnyx.DIALECT)
    parser.parse(side.start())
    parser.parse(side.media(FRAME, 0))
    side._chunk += 5  # five chunks lost, and the timestamp an hour on
    media = parser.parse(side.media(FRAME, 3_600_000))
    assert media.gap_bytes == 0 and media.skipped_ms >= 3_599_000
    assert parser.long_gaps == 1
    side._chunk += 2  # a short loss is still filled with silence
    media = parser.parse(side.media(FRAME, 3_600_000 + 80))
    assert media.gap_bytes == 480 and media.skipped_ms == 0  # 60 ms by the timestamps
