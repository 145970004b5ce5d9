"""Vonage's WebSocket messages on plain strings and bytes, at 8 and 16 kHz."""

import math
import struct

import orjson
import pytest

from ivr.audio import pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony.twilio import Dtmf, Mark, Media, ProtocolError, Start
from ivr.telephony.vonage import (
    CAPABILITIES, Cleared, Notice, OutAudio, OutClear, OutNotify, VonageParser, VonageSender, VonageWriter,
    parse_content_type, parse_outbound,
)


def tone(rate: int, ms: int = 20, hz: float = 440.0) -> bytes:
    n = rate * ms // 1000
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)))


def test_an_8khz_call_parses_into_the_engines_events():
    side = VonageSender("aaaa-bbbb", headers={"from": "447700900000", "to": "447700900001", "ivr_token": "t0k"})
    parser = VonageParser()
    start = parser.parse(side.connected())
    assert isinstance(start, Start) and start.call_sid == "aaaa-bbbb"
    assert start.custom_parameters["From"] == "447700900000"
    assert "ivr_token" not in start.custom_parameters  # the token checks the socket; it is no call data
    assert parser.token == "t0k"
    frame = tone(8000)
    media = parser.parse(side.audio(frame))
    assert isinstance(media, Media) and media.payload == pcm16_to_ulaw(frame)
    assert parser.parse(side.audio(frame)).timestamp_ms == 20
    assert isinstance(parser.parse(side.dtmf("9")), Dtmf)
    mark = parser.parse(side.notify({"ivr_mark": "t1p2"}))
    assert isinstance(mark, Mark) and mark.name == "t1p2"
    assert isinstance(parser.parse(side.notify({"other": 1})), Notice)
    assert parser.parse(side.cleared()) == Cleared()


def test_a_16khz_call_reaches_the_engine_as_8khz_and_leaves_at_16khz():
    parser = VonageParser()
    parser.parse(VonageSender("c", rate=16000).connected())
    assert parser.rate == 16000
    total = b"".join(parser.parse(tone(16000)).payload for _ in range(10))
    assert abs(len(total) - 10 * 160) <= 16  # 8 kHz mu-law, nothing held back beyond the filter
    writer = VonageWriter(rate=16000)
    out = b"".join(writer.media(pcm16_to_ulaw(tone(8000))) for _ in range(10))
    assert abs(len(out) - 10 * 640) <= 64


@pytest.mark.parametrize(
    "value, rate", [("audio/l16;rate=16000", 16000), ("audio/l16; rate=8000", 8000), ("Audio/L16;rate=8000", 8000)]
)
def test_content_types_vonage_sends(value, rate):
    assert parse_content_type(value) == rate


@pytest.mark.parametrize(
    "messages, kind",
    [
        ([b"\x00\x00"], "media_before_start"),
        (['{"event":"websocket:dtmf","digit":"1"}'], "before_start"),
        (['{"event":"websocket:connected","content-type":"audio/l16;rate=44100","call_uuid":"c"}'], "media_format"),
        (['{"event":"websocket:connected","content-type":"audio/pcmu;rate=8000","call_uuid":"c"}'], "media_format"),
        (['{"event":"websocket:connected","content-type":"audio/l16;rate=8000"}'], "missing_field"),
        (["nope"], "bad_json"),
        ([VonageSender("c").connected(), b"\x00"], "bad_field"),
        ([VonageSender("c").connected(), '{"event":"websocket:dtmf","digit":"x"}'], "bad_field"),
        ([VonageSender("c").connected(), VonageSender("c").connected()], "duplicate_start"),
    ],
)
def test_malformed_messages_raise_a_named_protocol_error(messages, kind):
    parser = VonageParser()
    with pytest.raises(ProtocolError) as err:
        for m in messages:
            parser.parse(m)
    assert err.value.kind == kind


def test_what_the_bot_sends_reads_back_as_vonage_would():
    writer = VonageWriter()
    assert CAPABILITIES.clear and CAPABILITIES.marks
    ulaw = pcm16_to_ulaw(tone(8000))
    assert parse_outbound(writer.media(ulaw)) == OutAudio(ulaw_to_pcm16(ulaw))
    assert parse_outbound(writer.clear()) == OutClear()
    assert parse_outbound(writer.mark("t3p0")) == OutNotify({"ivr_mark": "t3p0"})
    assert orjson.loads(writer.mark("t3p0")) == {"action": "notify", "payload": {"ivr_mark": "t3p0"}}


def test_answer_ncco_connects_a_websocket_at_8khz_with_the_calls_headers():
    from ivr.telephony.vonage import answer

    ncco = orjson.loads(answer("wss://bot.example.com/media/vonage", {"call_uuid": "u1", "ivr_token": "t"}))
    endpoint = ncco[0]["endpoint"][0]
    assert ncco[0]["action"] == "connect" and endpoint["type"] == "websocket"
    assert endpoint["content-type"] == "audio/l16;rate=8000"
    assert endpoint["headers"] == {"call_uuid": "u1", "ivr_token": "t"}


def test_signed_webhooks_as_vonage_signs_them():
    import hashlib
    import time

    import jwt
    from vonage_jwt.verify_jwt import verify_signature

    from ivr.telephony.vonage import verify_webhook

    secret = "a-signature-secret-of-some-length-for-hs256"
    body = b'{"uuid":"u1","from":"447700900000"}'
    token = jwt.encode({"iat": int(time.time()), "payload_hash": hashlib.sha256(body).hexdigest()}, secret, algorithm="HS256")
    assert verify_signature(token, secret)  # the SDK agrees the token is Vonage's
    assert verify_webhook(secret, f"Bearer {token}", body)
    assert not verify_webhook(secret, f"Bearer {token}", body + b"x")
    assert not verify_webhook("another-secret-of-some-length-too!!", f"Bearer {token}", body)
    assert not verify_webhook(secret, None, body)
    bare = jwt.encode({"iat": int(time.time())}, secret, algorithm="HS256")
    assert verify_webhook(secret, f"Bearer {bare}")  # a GET answer URL has no body to hash


def test_stream_tokens():
    from ivr.telephony import stream_token

    token = stream_token.mint("s3cret", "call-1")
    assert stream_token.valid("s3cret", "call-1", token)
    assert not stream_token.valid("s3cret", "call-2", token)
    assert not stream_token.valid("other", "call-1", token)
    assert not stream_token.valid("s3cret", "call-1", "")
