"""The conversation engine with scripted providers and a clock the test moves: paced playout,
pauses that resume or cancel, marks on time, late or never, timers on the clock."""

import asyncio
import itertools

import pytest

from fakes.line import RecordingLine
from fakes.manual_time import ManualTime
from ivr.telephony import twiml
from ivr.call import Call, CallOptions
from ivr.providers.base import AudioChunk, EndOfTurn, Final, SpeechStarted, TextDelta, ToolCall
from ivr.providers.registry import Providers
from ivr.providers.scripted import FixedBrain, InstantTts, InstantTtsStream, ScriptedStt
from ivr.telephony.twilio import Dtmf, Mark, Media

SILENCE = b"\xff" * 160
GREETING = "Welcome to the bakery. We bake bread, cakes and pies every morning. How can I help you today? "
LEAD_FRAMES = 15  # the default 300 ms lead
_serial = itertools.count(1)


class NumberedStream(InstantTtsStream):
    """Instant audio whose every 20 ms frame is different, so a repeated frame shows."""

    async def push(self, text: str) -> int:
        i = self.n
        self.n += 1
        frames = (self.ms_per_char * max(1, len(text))) // 20
        audio = b"".join(next(_serial).to_bytes(4, "big") * 40 for _ in range(frames))
        self.queue.put_nowait(AudioChunk(i, audio, 8000, "ulaw", True))
        return i


class NumberedTts(InstantTts):
    def stream(self):
        s = NumberedStream(self.ms_per_char)
        self.streams.append(s)
        return s


async def started(options=None, brain=None, tts=None, marks=True, line=None):
    """A call whose greeting is made (its first lead of audio sent, nothing played yet)."""
    time = ManualTime()
    line = line or RecordingLine()
    stt = ScriptedStt()
    providers = Providers(stt=stt, tts=tts or NumberedTts(ms_per_char=20), brain=brain or FixedBrain(GREETING))
    call = Call(line, providers, options or CallOptions(), time=time, marks=marks)  # type: ignore[arg-type]
    await call.on_event(line.start)
    await line.wait_for(lambda: call._turn is not None and call._turn.produced and stt.sessions)
    return call, line, stt.sessions[0], time


def media(line, since=0):
    return [v for k, v in line.sent[since:] if k == "media"]


async def echo(call, names) -> None:
    for name in names:
        await call.on_event(Mark(0, name))


async def settle(line) -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_audio_goes_out_a_lead_ahead_of_the_ear_not_as_fast_as_it_is_made():
    call, line, stt, time = await started()
    greeting = call._turn
    assert len(greeting.frames) > 90  # about 1.9 s made at once
    assert len(media(line)) == LEAD_FRAMES
    await time.advance(1.0)
    sent = len(media(line))
    assert 50 + LEAD_FRAMES - 4 <= sent <= 50 + LEAD_FRAMES
    assert call.clock.queued(time.now()) <= 0.3 + 1e-6


async def test_a_real_interruption_clears_at_once_and_nothing_of_the_turn_follows():
    call, line, stt, time = await started()
    greeting = call._turn
    await time.advance(0.5)
    stt.push(SpeechStarted(at_ms=500))
    await line.wait_for(lambda: "clear" in line.kinds())
    clear_at = line.kinds().index("clear")
    assert call.state.value == "paused"
    await time.advance(0.4)
    assert media(line, clear_at) == []  # paused: not one frame
    stt.push(Final("Do you have rye bread?", 500, 1300))
    await line.wait_for(lambda: not greeting.gate_open)
    stt.push(EndOfTurn("Do you have rye bread?", 1300))
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs and call._turn.number == 2 and call._turn.first_audio_at)
    answer = call._turn
    assert all(f in answer.frames for f in media(line, clear_at))  # only the answer after the clear
    assert line.kinds().count("clear") == 1
    assert call.stats.barge_ins == 1
    history, caller = brain.inputs[0]
    bot = history[0]
    assert bot.role == "bot" and bot.interrupted
    assert GREETING.startswith(bot.text) and bot.text.startswith("Welcome") and len(bot.text) < len(GREETING.strip())


@pytest.mark.parametrize("heard", ["uh-huh", "Okay?", "Yeah, right!"])
async def test_a_backchannel_resumes_from_the_cut_frame_with_no_frame_said_twice(heard):
    call, line, stt, time = await started()
    greeting = call._turn
    await time.advance(0.51)  # a half frame into frame 25
    stt.push(SpeechStarted(at_ms=500))
    await line.wait_for(lambda: "clear" in line.kinds())
    clear_at = line.kinds().index("clear")
    assert greeting.cursor == 25  # back to the frame the caller was hearing
    await time.advance(0.8)  # a long murmur: its words decide
    stt.speaking = False
    stt.push(Final(heard, 500, 1300))
    await line.wait_for(lambda: call.state.value == "speaking")
    await settle(line)
    resumed = media(line, clear_at)
    assert resumed and resumed[0] == greeting.frames[25]
    stt.push(EndOfTurn(heard, 800))  # the murmur's turn, still to come from the recogniser
    await time.advance(3.0)
    assert call.providers.brain.sessions[0].inputs == []  # not a turn to answer
    # What the caller heard: frames 0..24 before the clear, then 25.. to the end, once each.
    heard_frames = media(line)[:25] + media(line, clear_at)
    assert heard_frames == greeting.frames
    turn = call._history()[0]
    assert turn.text == GREETING.strip() and not turn.interrupted
    assert call.stats.pauses == 1 and call.stats.resumes == 1 and call.stats.barge_ins == 0


async def test_a_long_sound_with_no_words_resumes_once_the_caller_is_quiet():
    call, line, stt, time = await started()
    await time.advance(0.4)
    stt.push(SpeechStarted(at_ms=400))
    await line.wait_for(lambda: "clear" in line.kinds())
    await time.advance(0.8)  # longer than a murmur
    stt.speaking = False
    await time.advance(0.8)
    assert call.state.value == "paused"
    await time.advance(0.3)  # quiet for resume_after_ms (900 ms), give or take a timer tick
    assert call.state.value == "speaking"


async def test_a_short_sound_resumes_at_once_and_words_that_follow_still_take_the_turn():
    call, line, stt, time = await started()
    greeting = call._turn
    await time.advance(0.4)
    stt.push(SpeechStarted(at_ms=400))
    await line.wait_for(lambda: "clear" in line.kinds())
    await time.advance(0.3)
    stt.speaking = False
    await time.advance(0.12)
    assert call.state.value == "speaking"  # a murmur's length: no wait for its words
    stt.push(EndOfTurn("Sunday?", 700))  # but it was a question after all
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs)
    assert not greeting.gate_open and line.kinds().count("clear") == 2


async def test_without_clear_a_pause_stops_feeding_and_the_lead_plays_out():
    line = RecordingLine()
    line.has_clear = False  # a carrier such as Asterisk AudioSocket
    call, line, stt, time = await started(line=line, marks=False)
    greeting = call._turn
    await time.advance(0.5)
    stt.push(SpeechStarted(at_ms=500))
    await line.wait_for(lambda: call.state.value == "paused")
    n = len(media(line))
    await time.advance(0.5)
    assert len(media(line)) == n and greeting.cursor == n  # nothing more fed, nothing rewound
    stt.speaking = False
    stt.push(EndOfTurn("okay", 900))
    await line.wait_for(lambda: call.state.value == "speaking")
    await time.advance(0.1)
    assert media(line) == greeting.frames[: len(media(line))]  # went on from the next frame
    stt.speaking = True
    stt.push(SpeechStarted(at_ms=1500))
    stt.push(EndOfTurn("what about sunday", 2500))
    await line.wait_for(lambda: not greeting.gate_open)
    assert "clear" not in line.kinds()


@pytest.mark.parametrize("marks", ["never", "late", "off"])
async def test_without_timely_marks_the_clock_ends_the_turn_and_a_question_after_it_is_no_barge_in(marks):
    call, line, stt, time = await started(marks=marks != "off")
    greeting = call._turn
    total_s = len(greeting.frames) * 0.02
    await time.advance(total_s + 0.1)
    if marks == "late":
        await echo(call, line.marks()[:1])  # one echo, 2.5 s behind its audio: ignored for timing
    assert call.state.value in ("greeting", "listening")
    await time.advance(0.6)  # past the mark margin
    assert call.state.value == "listening"
    assert (line.marks() != []) == (marks != "off")
    stt.push(SpeechStarted(at_ms=4000))
    stt.push(EndOfTurn("Do you have rye bread?", 5000))
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs)
    assert "clear" not in line.kinds() and call.stats.pauses == 0
    assert call._history()[0].text == GREETING.strip()


async def test_marks_on_time_confirm_and_a_slightly_late_one_holds_the_turn_a_little_longer():
    call, line, stt, time = await started()
    pieces = call._turn.ledger.pieces
    for piece in pieces[:-1]:  # echoed as each piece's audio ends, as Twilio does
        await time.advance(piece.end_frame * 0.02 + 1000 - time.now())
        await echo(call, [piece.mark])
    await time.advance(pieces[-1].end_frame * 0.02 + 1000 - time.now())
    assert call.clock.corrections == 0 and call.clock.late_echoes == 0
    await time.advance(0.2)
    assert call.state.value == "greeting"  # the last mark is not back yet (within its margin)
    await echo(call, [pieces[-1].mark])  # 200 ms late: the clock moves, the turn ends with it
    await time.advance(0.02)
    assert call.state.value == "listening" and call.clock.corrections == 1


async def test_silent_callers_are_reprompted_on_the_clock_then_told_goodbye():
    call, line, stt, time = await started(CallOptions(reprompt_after_ms=1000, max_reprompts=1), marks=False)
    stt.speaking = False
    brain = call.providers.brain.sessions[0]
    await time.advance(len(call._turn.frames) * 0.02 + 1.2)  # no caller frame at all
    await line.wait_for(lambda: brain.inputs)
    assert brain.inputs[0][1].text is None and brain.inputs[0][1].dtmf is None  # silence
    await time.advance(6.0)
    await line.wait_for(lambda: call._ending)
    await time.advance(6.0)
    await asyncio.wait_for(line.hung_up.wait(), 2)


async def test_hang_up_follows_the_goodbye_once_the_clock_says_it_was_heard():
    brain = FixedBrain("Hi. ", answer=lambda caller: [TextDelta("Goodbye then, and thank you. "), ToolCall("hangup", {}, "1")])
    call, line, stt, time = await started(brain=brain, marks=False)
    await time.advance(0.5)
    stt.push(EndOfTurn(text="bye", at_ms=300))
    await line.wait_for(lambda: call._turn.number == 2 and call._turn.produced)
    goodbye_s = len(call._turn.frames) * 0.02
    await time.advance(goodbye_s - 0.1)
    assert not line.hung_up.is_set()  # its audio is still playing
    await time.advance(0.2)
    await asyncio.wait_for(line.hung_up.wait(), 2)
    assert line.ended_by_bot


async def test_dtmf_zero_transfers_after_the_announcement_without_marks():
    brain = FixedBrain("Hi. ", answer=lambda caller: [TextDelta("Putting you through. "), ToolCall("transfer", {"to": "sip:desk@pbx.example.com", "summary": "rye"}, "1")])
    call, line, stt, time = await started(brain=brain, marks=False)
    await time.advance(0.5)
    await call.on_event(Dtmf(0, "0", "inbound_track"))
    await line.wait_for(lambda: call._turn.number == 2 and call._turn.produced)
    await time.advance(len(call._turn.frames) * 0.02 + 0.05)
    await asyncio.wait_for(line.hung_up.wait(), 2)
    assert line.transfer_to == ("sip:desk@pbx.example.com", "rye") and line.left
    # Without call control, Twilio's stream end serves this TwiML at /twiml/fallback.
    assert "<Sip>sip:desk@pbx.example.com?X-Ivr-Summary=rye</Sip>" in twiml.transfer(*line.transfer_to)
    assert call.providers.brain.sessions[0].inputs[0][1].dtmf == "0"
    assert "mark" not in line.kinds()


async def test_short_speech_under_min_speech_ms_does_not_pause():
    call, line, stt, time = await started(CallOptions(min_speech_ms=300))
    stt.speaking = False  # a short sound that is over by the time it is judged
    stt.push(SpeechStarted(at_ms=call.caller_ms))
    await settle(line)
    for _ in range(20):
        await call.on_event(Media(0, 0, 0, "inbound", SILENCE))
    assert "clear" not in line.kinds()
    stt.speaking = True  # now real speech that goes on
    stt.push(SpeechStarted(at_ms=call.caller_ms))
    await settle(line)
    for _ in range(10):
        await call.on_event(Media(0, 0, 0, "inbound", SILENCE))
    assert "clear" not in line.kinds()  # not yet 300 ms
    for _ in range(6):
        await call.on_event(Media(0, 0, 0, "inbound", SILENCE))
    assert "clear" in line.kinds()


async def test_a_broken_tts_costs_the_turn_not_the_call():
    class BrokenTts(InstantTts):
        def stream(self):
            raise RuntimeError("provider down")

    time = ManualTime()
    line = RecordingLine()
    stt = ScriptedStt()
    call = Call(line, Providers(stt=stt, tts=BrokenTts(), brain=FixedBrain(GREETING)), time=time)  # type: ignore[arg-type]
    await call.on_event(line.start)
    await line.wait_for(lambda: stt.sessions and call.state.value == "listening")
    assert "media" not in line.kinds()
    stt.sessions[0].push(EndOfTurn(text="hello?", at_ms=100))
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs)
    assert not call._main.done()  # the call goes on
    await call.close("test")


def test_engine_options_come_from_the_flow_file_and_typos_are_errors():
    from ivr.call.options import call_options
    from ivr.config import ConfigError

    opts = call_options({"barge_in": {"min_speech_ms": 250, "backchannels": ["Mhm"], "pause": "starve"},
                         "silence": {"reprompt_after": 5}, "voice": {"split": "sentence"}})
    assert (opts.min_speech_ms, opts.backchannels, opts.reprompt_after_ms, opts.split.strategy, opts.pause) == (250, ("mhm",), 5000, "sentence", "starve")
    with pytest.raises(ConfigError, match="barge_in"):
        call_options({"barge_in": {"min_speech": 3}})
    with pytest.raises(ConfigError, match="pause"):
        call_options({"barge_in": {"pause": "mute"}})
    with pytest.raises(ConfigError, match="split"):
        call_options({"voice": {"split": "paragraph"}})


async def test_hanging_up_mid_sentence_frees_the_tts_at_once():
    class StallingStream(InstantTtsStream):
        async def push(self, text):  # accepted, never rendered
            self.n += 1
            return self.n - 1

        async def end(self):  # and never finished
            pass

    class StallingTts(InstantTts):
        def stream(self):
            s = StallingStream(self.ms_per_char)
            self.streams.append(s)
            return s

    tts = StallingTts()
    line = RecordingLine()
    call = Call(line, Providers(stt=ScriptedStt(), tts=tts, brain=FixedBrain(GREETING)), time=ManualTime())  # type: ignore[arg-type]
    await call.on_event(line.start)
    await line.wait_for(lambda: tts.streams)
    await call.close("stop")
    assert tts.streams[0].cancelled


async def test_a_reply_begun_on_an_eager_end_of_turn_is_spoken_when_the_turn_ends_so():
    from ivr.providers.base import EagerEndOfTurn, TurnResumed

    brain = FixedBrain(GREETING, answer=lambda caller: [TextDelta(f"You said {caller.text} ")])
    call, line, stt, time = await started(brain=brain)
    session = brain.sessions[0]
    session.speculative = True
    await time.advance(2.5)
    stt.push(EagerEndOfTurn("rye bread", 500))
    await line.wait_for(lambda: session.inputs)
    n_media = line.kinds().count("media")
    await settle(line)
    assert line.kinds().count("media") == n_media  # prepared, not spoken
    stt.push(EndOfTurn("Rye bread.", 600))
    await line.wait_for(lambda: call._turn.produced and call._turn.number == 2)
    assert len(session.inputs) == 1  # the brain was asked once, early
    assert call._turn.ledger.pieces[0].text == "You said rye bread"

    # A guess the caller overrules: the early reply is dropped, the real turn answered.
    await time.advance(2.0)
    stt.push(EagerEndOfTurn("sour", 900))
    await line.wait_for(lambda: len(session.inputs) == 2)
    stt.push(TurnResumed(950))
    stt.push(EndOfTurn("sourdough please", 1500))
    await line.wait_for(lambda: call._turn.number == 3 and call._turn.produced)
    assert [c.text for _, c in session.inputs] == ["rye bread", "sour", "sourdough please"]
    assert call._turn.ledger.pieces[0].text == "You said sourdough please"


async def test_a_stateful_brain_is_never_asked_early():
    from ivr.providers.base import EagerEndOfTurn

    call, line, stt, time = await started()
    stt.push(EagerEndOfTurn("hours", 500))
    await settle(line)
    assert call.providers.brain.sessions[0].inputs == []
