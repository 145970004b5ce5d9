"""Twilio Media Streams messages exactly as Twilio's documentation shows them."""

import base64
import json

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA4fe3d97a4a2c0c8d0bb3c0a8f4d3a0e1"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2  # built, so it never reads as a real credential

CONNECTED = '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'


def start(seq="1", params=None, media_format=None, stream_sid=STREAM_SID):
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": seq,
            "start": {
                "accountSid": ACCOUNT_SID,
                "streamSid": stream_sid,
                "callSid": CALL_SID,
                "tracks": ["inbound"],
                "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params if params is not None else {"From": "+15551234567", "To": "+15557654321"},
            },
            "streamSid": stream_sid,
        }
    )


def media(seq, chunk, timestamp, payload=b"\xff" * 160, track="inbound", stream_sid=STREAM_SID):
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp),
                "payload": base64.b64encode(payload).decode() if isinstance(payload, bytes) else payload,
            },
            "streamSid": stream_sid,
        }
    )


def dtmf(seq, digit):
    return json.dumps(
        {"event": "dtmf", "streamSid": STREAM_SID, "sequenceNumber": str(seq), "dtmf": {"track": "inbound_track", "digit": digit}}
    )


def mark(seq, name):
    return json.dumps({"event": "mark", "sequenceNumber": str(seq), "streamSid": STREAM_SID, "mark": {"name": name}})


def stop(seq):
    return json.dumps(
        {"event": "stop", "sequenceNumber": str(seq), "streamSid": STREAM_SID, "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID}}
    )
