"""The carrier's side of a replayed call, for each carrier ivr speaks to.

The emulator plays one caller on one clock; what differs between carriers is only the wire:
how the call opens, how caller audio, keys and the hang-up are written, how the bot's audio,
marks and clears are read, whether a clear echoes the pending marks, and whether the socket is
a WebSocket or Asterisk's AudioSocket over TCP. Each `CarrierSide` is those differences, built
from the carrier's own codec module (its "sender" and outbound parser), so the harness speaks
each protocol exactly as the codec tests pin it.

`parse()` returns the bot's messages as the emulator's three events: `OutMedia` (8 kHz mu-law),
`OutMark`, `OutClear`; a message the carrier ignores returns nothing.
"""

from __future__ import annotations

import binascii
import uuid
from typing import Callable, Mapping

import orjson

from ivr.audio import pcm16_to_ulaw, ulaw_to_pcm16
from ivr.telephony import asterisk_ws, audiosocket, exotel, plivo, telnyx, vonage
from ivr.telephony.twilio import OutClear, OutMark, OutMedia, ProtocolError, TwilioSender, load_object, parse_outbound

CARRIERS = ("twilio", "telnyx", "plivo", "exotel", "vonage", "asterisk-ws", "audiosocket")
#: The route each carrier's stream reaches on `ivr serve` (AudioSocket is a TCP port instead).
PATHS = {
    "twilio": "/media", "telnyx": "/media/telnyx", "plivo": "/media/plivo", "exotel": "/media/exotel",
    "vonage": "/media/vonage", "asterisk-ws": "/media/asterisk",
}


class CarrierSide:
    """Twilio's side; the other carriers override what differs."""

    name = "twilio"
    transport = "ws"
    #: A clear sends the pending marks back at once (Twilio, Telnyx) rather than dropping them.
    echoes_on_clear = True
    #: The carrier plays marks back: without them, what was heard is the bot's own reckoning.
    has_marks = True
    #: The bot can drop the audio it queued: without it, a barge-in is the bot going quiet.
    has_clear = True
    #: Caller audio goes in text frames (JSON), not binary ones.
    media_text = True

    def __init__(self, call_id: str, stream_id: str, account_id: str, params: Mapping[str, str]) -> None:
        self.call_id = call_id
        self.stream_id = stream_id
        self.params = dict(params)
        self._twilio = TwilioSender(stream_id, call_id, account_id)

    def opening(self) -> list[str | bytes]:
        return [self._twilio.connected(), self._twilio.start(self.params)]

    def media(self, ulaw: bytes, due_ms: int) -> str | bytes:
        return self._twilio.media(ulaw, due_ms)

    def media_bytes(self, ulaw: bytes, due_ms: int) -> bytes:
        """`media()` as the bytes of its frame (a text frame when `media_text`)."""
        message = self.media(ulaw, due_ms)
        return message.encode() if isinstance(message, str) else message

    def dtmf(self, digit: str) -> str | bytes:
        return self._twilio.dtmf(digit)

    def mark(self, name: str) -> str | bytes | None:
        return self._twilio.mark(name)

    def stop(self) -> str | bytes | None:
        return self._twilio.stop()

    def parse(self, message: str | bytes) -> list:
        return [parse_outbound(message, self.stream_id)]


class TwilioSide(CarrierSide):
    def __init__(self, call_id: str, stream_id: str, account_id: str, params: Mapping[str, str]) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        # Every 20 ms of every call of a load run: the sender's bytes, with no call between.
        self.media_bytes = self._twilio.media_utf8

    def parse(self, message: str | bytes) -> list:
        """The bot's media (50 messages a second per call) read with parse_outbound's checks in
        fewer steps; anything else, and anything it would refuse, goes through parse_outbound."""
        if type(message) is str:
            try:
                msg = orjson.loads(message)
                media = msg["media"]
                if msg["event"] == "media" and msg["streamSid"] == self.stream_id and type(media) is dict:
                    payload = media["payload"]
                    if type(payload) is str:
                        payload = binascii.a2b_base64(payload, strict_mode=True)
                        if payload:
                            return [OutMedia(payload)]
            except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError):
                pass
        return [parse_outbound(message, self.stream_id)]


class _TwilioShapedSide(CarrierSide):
    """A carrier whose sender has Twilio's methods (connected, start, media, dtmf, mark, stop)."""

    def opening(self):
        return [self._side.connected(), self._side.start(self.params)]

    def media(self, ulaw, due_ms):
        return self._side.media(ulaw, due_ms)

    def dtmf(self, digit):
        return self._side.dtmf(digit)

    def mark(self, name):
        return self._side.mark(name)

    def stop(self):
        return self._side.stop()


class TelnyxSide(_TwilioShapedSide):
    name = "telnyx"

    def __init__(self, call_id, stream_id, account_id, params) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        self._side = telnyx.TelnyxSender(stream_id, call_id)

    def parse(self, message):
        msg = load_object(message)
        event = msg.get("event")
        if event == "media":
            return [OutMedia(_b64(msg.get("media", {}).get("payload")))]
        if event == "mark":
            return [OutMark(str(msg.get("mark", {}).get("name", "")))]
        if event == "clear":
            return [OutClear()]
        raise ProtocolError("unknown_event", f"event {event!r:.40} is not one Telnyx accepts")


class PlivoSide(CarrierSide):
    name = "plivo"
    echoes_on_clear = False

    def __init__(self, call_id, stream_id, account_id, params) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        headers = ";".join(f"{k}={v}" for k, v in self.params.items())
        self._side = plivo.PlivoSender(stream_id, call_id, extra_headers=headers)

    def opening(self):
        return [self._side.start()]

    def media(self, ulaw, due_ms):
        return self._side.media(ulaw, due_ms)

    def dtmf(self, digit):
        return self._side.dtmf(digit)

    def mark(self, name):
        return self._side.played(name)

    def stop(self):
        return None  # Plivo has no stop message: the socket closes

    def parse(self, message):
        msg = load_object(message)
        event = msg.get("event")
        if event == "playAudio":
            media = msg.get("media") or {}
            if media.get("contentType") != "audio/x-mulaw" or media.get("sampleRate") != 8000:
                raise ProtocolError("media_format", f"playAudio {media.get('contentType')!r} at {media.get('sampleRate')!r}")
            return [OutMedia(_b64(media.get("payload")))]
        if event == "checkpoint":
            return [OutMark(str(msg.get("name", "")))]
        if event == "clearAudio":
            return [OutClear()]
        raise ProtocolError("unknown_event", f"event {event!r:.40} is not one Plivo accepts")


class ExotelSide(_TwilioShapedSide):
    name = "exotel"
    echoes_on_clear = False

    def __init__(self, call_id, stream_id, account_id, params) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        self._side = exotel.ExotelSender(stream_id, call_id)

    def parse(self, message):
        msg = load_object(message)
        event = msg.get("event")
        if msg.get("stream_sid") != self.stream_id:
            raise ProtocolError("stream_sid_mismatch", f"{event}: stream_sid is not this stream's")
        if event == "media":
            pcm = _b64(msg.get("media", {}).get("payload"))
            if len(pcm) % 320:
                raise ProtocolError("bad_field", f"media of {len(pcm)} bytes is not a multiple of 320")
            return [OutMedia(pcm16_to_ulaw(pcm))]
        if event == "mark":
            return [OutMark(str(msg.get("mark", {}).get("name", "")))]
        if event == "clear":
            return [OutClear()]
        raise ProtocolError("unknown_event", f"event {event!r:.40} is not one Exotel accepts")


class VonageSide(CarrierSide):
    name = "vonage"
    echoes_on_clear = False
    media_text = False

    def __init__(self, call_id, stream_id, account_id, params) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        self.stream_id = call_id  # Vonage names no stream: the bot knows it by the call's uuid
        self._side = vonage.VonageSender(call_id, headers=dict(self.params))

    def opening(self):
        return [self._side.connected()]

    def media(self, ulaw, due_ms):
        return ulaw_to_pcm16(ulaw)

    def dtmf(self, digit):
        return self._side.dtmf(digit)

    def mark(self, name):
        return self._side.notify({vonage.MARK_KEY: name})

    def stop(self):
        return None

    def parse(self, message):
        out = vonage.parse_outbound(message)
        if isinstance(out, vonage.OutAudio):
            return [OutMedia(pcm16_to_ulaw(out.pcm))]
        if isinstance(out, vonage.OutClear):
            return [OutClear()]
        name = out.payload.get(vonage.MARK_KEY) if isinstance(out.payload, dict) else None
        return [OutMark(str(name))] if name else []


class AsteriskWsSide(CarrierSide):
    name = "asterisk-ws"
    echoes_on_clear = False
    media_text = False

    def __init__(self, call_id, stream_id, account_id, params) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        self.stream_id = call_id  # MEDIA_START's connection_id: the channel's id here
        self._side = asterisk_ws.AsteriskWsSender(call_id, json_control=True, variables=self.params)

    def opening(self):
        return [self._side.media_start()]

    def media(self, ulaw, due_ms):
        return ulaw

    def dtmf(self, digit):
        return self._side.dtmf(digit)

    def mark(self, name):
        return self._side.mark_processed(name)

    def stop(self):
        return None  # Asterisk ends the call by closing the socket

    def parse(self, message):
        out = asterisk_ws.parse_command(message, json_control=True)
        if isinstance(out, asterisk_ws.OutMedia):
            return [OutMedia(out.payload)]
        if out.command == "MARK_MEDIA":
            return [OutMark(out.argument or "")]
        if out.command == "FLUSH_MEDIA":
            return [OutClear()]
        if out.command == "HANGUP":
            return [Hangup()]
        return []


class Hangup:
    """The bot asked the carrier to hang up (Asterisk's HANGUP, AudioSocket's 0x00)."""


class AudioSocketSide(CarrierSide):
    """Asterisk over TCP: no marks, no clear; Asterisk plays audio as it comes."""

    name = "audiosocket"
    transport = "tcp"
    echoes_on_clear = False
    media_text = False
    has_marks = False
    has_clear = False

    def __init__(self, call_id, stream_id, account_id, params) -> None:
        super().__init__(call_id, stream_id, account_id, params)
        self.call_uuid = uuid.UUID(call_id) if _is_uuid(call_id) else uuid.uuid4()
        # The bot names the call (and binds its side channel) by the UUID's canonical text.
        self.call_id = self.stream_id = str(self.call_uuid)
        self._side = audiosocket.AsteriskSender(self.call_uuid)
        self._bot = audiosocket.BotStreamParser()

    def opening(self):
        return [self._side.uuid()]

    def media(self, ulaw, due_ms):
        return self._side.audio(ulaw_to_pcm16(ulaw))

    def dtmf(self, digit):
        return self._side.dtmf(digit)

    def mark(self, name):
        return None

    def stop(self):
        return self._side.hangup()

    def parse(self, message):
        events = []
        for out in self._bot.feed(message):
            if isinstance(out, audiosocket.OutAudio):
                events.append(OutMedia(pcm16_to_ulaw(out.pcm16)))
            else:
                events.append(Hangup())
        return events


SIDES: dict[str, Callable[..., CarrierSide]] = {
    "twilio": TwilioSide, "telnyx": TelnyxSide, "plivo": PlivoSide, "exotel": ExotelSide,
    "vonage": VonageSide, "asterisk-ws": AsteriskWsSide, "audiosocket": AudioSocketSide,
}


def _b64(value) -> bytes:
    if not isinstance(value, str) or not value:
        raise ProtocolError("empty_payload", "no payload")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("bad_base64", f"payload is not base64 ({exc})") from None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
