"""The bot's audio as messages: frames sent in one go leave as one message where the carrier
takes audio of any size (Twilio), never across a mark, never after a clear; fixed-frame carriers
still get one frame a message."""

import logging

import pytest
from prometheus_client import REGISTRY

from fakes.line import WireLine, start_event
from ivr.logs import CallLog
from ivr.providers.base import EndOfTurn, Final, SpeechStarted
from ivr.session import Line
from ivr.telephony import asterisk_ws, audiosocket, exotel, plivo, vonage
from ivr.telephony.carriers import CARRIERS
from ivr.telephony.twilio import StreamWriter
from test_call_engine import LEAD_FRAMES, settle, started

FRAME = 160


def joined(frames) -> bytes:
    return b"".join(frames)


def media_payloads(line, since=0) -> list[bytes]:
    return [v for k, v in line.sent[since:] if k == "media"]


async def test_a_top_up_of_k_frames_goes_out_as_one_twilio_message_of_those_frames_in_order():
    call, line, stt, time = await started(line=WireLine())
    greeting = call._turn
    # The start of the turn: the whole lead, in one message.
    assert line.sent == [("media", joined(greeting.frames[:LEAD_FRAMES]))]
    n = len(line.messages)
    await time.advance(0.06, step=0.06)  # the queue has fallen a top-up under the lead
    assert line.sent[n:] == [("media", joined(greeting.frames[LEAD_FRAMES : LEAD_FRAMES + 3]))]
    assert greeting.cursor == LEAD_FRAMES + 3


async def test_a_mark_follows_exactly_its_pieces_last_frame_and_the_audio_is_the_turn_in_order():
    call, line, stt, time = await started(line=WireLine())
    greeting = call._turn
    await time.advance(len(greeting.frames) * 0.02 + 0.1)
    assert greeting.cursor == len(greeting.frames)
    pieces = greeting.ledger.pieces
    assert len(pieces) >= 3
    frames_before: dict[str, int] = {}
    audio = b""
    for kind, value in line.sent:
        if kind == "media":
            assert len(value) % FRAME == 0
            audio += value
        elif kind == "mark":
            frames_before[value] = len(audio) // FRAME
    assert audio == joined(greeting.frames)
    assert frames_before == {greeting.mark_name(p.index): p.end_frame for p in pieces}
    messages = line.kinds().count("media")
    assert messages < len(greeting.frames) // 2  # batched, not one a frame


async def test_a_barge_in_leaves_no_frame_of_the_turn_after_the_clear():
    call, line, stt, time = await started(line=WireLine())
    greeting = call._turn
    await time.advance(0.5)
    stt.push(SpeechStarted(at_ms=500))
    await line.wait_for(lambda: "clear" in line.kinds())
    clear_at = line.kinds().index("clear")
    before = joined(media_payloads(line)[: line.kinds()[:clear_at].count("media")])
    assert before == joined(greeting.frames[: len(before) // FRAME])
    await time.advance(0.4)
    assert media_payloads(line, clear_at) == []  # paused: not one frame
    stt.push(Final("Do you have rye bread?", 500, 1300))
    await line.wait_for(lambda: not greeting.gate_open)
    stt.push(EndOfTurn("Do you have rye bread?", 1300))
    await line.wait_for(lambda: call._turn.number == 2 and call._turn.first_audio_at)
    await settle(line)
    answer = call._turn
    after = joined(media_payloads(line, clear_at))
    assert after and after == joined(answer.frames[: len(after) // FRAME])  # only the answer
    assert line.kinds().count("clear") == 1


async def test_a_backchannel_resumes_in_one_message_from_the_cut_frame():
    call, line, stt, time = await started(line=WireLine())
    greeting = call._turn
    await time.advance(0.51)  # a half frame into frame 25
    stt.push(SpeechStarted(at_ms=500))
    await line.wait_for(lambda: "clear" in line.kinds())
    clear_at = line.kinds().index("clear")
    await time.advance(0.8)
    stt.speaking = False
    stt.push(Final("uh-huh", 500, 1300))
    await line.wait_for(lambda: call.state.value == "speaking")
    await settle(line)
    resumed = media_payloads(line, clear_at)
    assert resumed and len(resumed[0]) > FRAME
    assert joined(resumed) == joined(greeting.frames[25 : 25 + len(joined(resumed)) // FRAME])


class SpyWriter:
    """A carrier's writer, noting how many frames each `media` call is given."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def media(self, ulaw: bytes):
        self.sizes.append(len(ulaw) // FRAME)
        return self.inner.media(ulaw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("writer", [
    vonage.VonageWriter(), audiosocket.AudioSocketWriter(), asterisk_ws.AsteriskWsWriter(),
    plivo.PlivoWriter("stream"), exotel.ExotelWriter("stream"),
], ids=lambda w: type(w).__name__)
async def test_a_fixed_frame_carrier_still_gets_one_frame_a_message(writer):
    spy = SpyWriter(writer)
    line = WireLine(writer=spy)
    call, _, stt, time = await started(line=line)
    greeting = call._turn
    await time.advance(1.0)
    assert len(spy.sizes) == greeting.cursor > LEAD_FRAMES and set(spy.sizes) == {1}
    if isinstance(writer, vonage.VonageWriter):  # binary frames of 20 ms each, as Vonage plays them
        audio = [m for m in line.messages if isinstance(m, bytes)]
        assert len(audio) == greeting.cursor and {len(m) for m in audio} == {2 * FRAME}


def test_only_carriers_that_document_any_size_take_several_frames_a_message():
    takes = {name: getattr(c.writer(start_event(), _Parser()), "max_frames_per_message", 1)
             for name, c in CARRIERS.items()}
    assert takes.pop("twilio") == takes.pop("telnyx") == 50  # a second: what we accept from Twilio
    assert set(takes.values()) == {1}, takes


class _Parser:
    rate = 8000
    json_control = False


async def test_the_line_makes_one_message_of_a_batch_and_counts_frames_not_messages():
    sent = WireLine()
    frames = [bytes([i]) * FRAME for i in range(1, 8)]
    before = REGISTRY.get_sample_value("ivr_frames_out_total") or 0
    await sent.send_frames(frames)
    assert sent.sent == [("media", joined(frames))]
    assert REGISTRY.get_sample_value("ivr_frames_out_total") - before == 7
    with pytest.raises(ValueError):
        await sent.send_frames([b"\xff" * FRAME] * (StreamWriter.max_frames_per_message + 1))
    one = Line(sent.transport, start_event(), CallLog(logging.getLogger("ivr.test")), "", 0.0,
               writer=vonage.VonageWriter())
    with pytest.raises(ValueError):
        await one.send_frames(frames[:2])
