"""The conversation engine with scripted providers: deterministic turn-taking and barge-in."""

import asyncio

import pytest

from fakes.line import RecordingLine
from ivr.call import Call, CallOptions
from ivr.providers.base import EndOfTurn, SpeechStarted, TextDelta, ToolCall
from ivr.providers.registry import Providers
from ivr.providers.scripted import FixedBrain, InstantTts, ScriptedStt
from ivr.telephony.twilio import Dtmf, Mark, Media

SILENCE = b"\xff" * 160
GREETING = "Welcome to the bakery. We bake bread, cakes and pies every morning. How can I help you today? "


async def started(options=None, brain=None, tts=None, params=None):
    """A call whose greeting has been generated and sent whole (none of its marks echoed yet)."""
    line = RecordingLine(params)
    stt = ScriptedStt()
    providers = Providers(stt=stt, tts=tts or InstantTts(ms_per_char=20), brain=brain or FixedBrain(GREETING))
    call = Call(line, providers, options or CallOptions())  # type: ignore[arg-type]
    await call.on_event(line.start)
    await line.wait_for(lambda: call._turn is not None and call._turn.done_generating and stt.sessions)
    return call, line, stt.sessions[0]


async def feed(call, ms: int) -> None:
    for _ in range(ms // 20):
        await call.on_event(Media(0, 0, 0, "inbound", SILENCE))


async def echo_marks(call, line, names=None) -> None:
    for name in names if names is not None else line.marks():
        await call.on_event(Mark(0, name))


async def test_barge_in_clears_and_no_frame_of_the_cut_turn_follows():
    call, line, stt = await started()
    await line.wait_for(lambda: line.marks()[-1:] and call._turn.done_generating)
    n_before = len(line.sent)
    stt.push(SpeechStarted(at_ms=100))
    await line.wait_for(lambda: "clear" in line.kinds())
    clear_at = line.kinds().index("clear")
    assert clear_at >= n_before - 1
    # Nothing of the greeting may follow the clear, even as its task winds down.
    await asyncio.sleep(0.05)
    assert "media" not in line.kinds()[clear_at:]
    assert call.stats.barge_ins == 1


async def test_history_after_a_barge_in_holds_only_what_was_heard():
    call, line, stt = await started()
    await line.wait_for(lambda: len(line.marks()) >= 3 and call._turn.done_generating)
    first = line.marks()[0]
    await echo_marks(call, line, [first])  # only the first piece has played
    stt.push(SpeechStarted(at_ms=100))
    await line.wait_for(lambda: "clear" in line.kinds())
    await echo_marks(call, line, line.marks()[1:])  # Twilio returns the rest on clear
    stt.push(EndOfTurn(text="Do you have rye bread?", at_ms=900))
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs)
    history, caller = brain.inputs[0]
    assert caller.text == "Do you have rye bread?"
    bot = history[0]
    assert bot.role == "bot" and bot.interrupted
    assert GREETING.startswith(bot.text) and bot.text.startswith("Welcome") and len(bot.text) < len(GREETING.strip())


async def test_short_speech_under_min_speech_ms_does_not_interrupt():
    call, line, stt = await started(CallOptions(min_speech_ms=300))
    stt.speaking = False  # a short sound that is over by the time it is judged
    stt.push(SpeechStarted(at_ms=call.caller_ms))
    await asyncio.sleep(0)
    await feed(call, 400)
    assert "clear" not in line.kinds()
    stt.speaking = True  # now real speech that goes on
    stt.push(SpeechStarted(at_ms=call.caller_ms))
    await asyncio.sleep(0)
    await feed(call, 200)
    assert "clear" not in line.kinds()  # not yet 300 ms
    await feed(call, 120)
    assert "clear" in line.kinds()


@pytest.mark.parametrize("heard", ["uh-huh", "Okay?", "Uh-huh.", "Yeah, right!"])
async def test_backchannel_interruption_resumes_the_cut_sentence(heard):
    """Whatever punctuation the recogniser guesses for the murmur, it is a backchannel."""
    call, line, stt = await started()
    await line.wait_for(lambda: len(line.marks()) >= 3 and call._turn.done_generating)
    await echo_marks(call, line, line.marks()[:1])
    stt.push(SpeechStarted(at_ms=100))
    await line.wait_for(lambda: "clear" in line.kinds())
    await echo_marks(call, line, line.marks()[1:])
    n = len(line.sent)
    stt.push(EndOfTurn(text=heard, at_ms=500))
    await line.wait_for(lambda: "media" in line.kinds()[n:])
    assert call.providers.brain.sessions[0].inputs == []  # the brain was not asked
    resumed = " ".join(p.text for p in call._turn.ledger.pieces)
    cut_piece = call.history[0][1].ledger.pieces[1].text
    assert resumed.startswith(cut_piece) and "Welcome" not in resumed  # from the cut piece on


async def test_hang_up_waits_until_the_goodbye_was_heard():
    brain = FixedBrain("Hi. ", answer=lambda caller: [TextDelta("Goodbye then. "), ToolCall("hangup", {}, "1")])
    call, line, stt = await started(brain=brain)
    await echo_marks(call, line)
    stt.push(EndOfTurn(text="bye", at_ms=300))
    await line.wait_for(lambda: len(line.marks()) >= 2)
    await asyncio.sleep(0.05)
    assert not line.hung_up.is_set()  # its audio is still playing
    await echo_marks(call, line, line.marks()[1:])
    await asyncio.wait_for(line.hung_up.wait(), 2)
    assert line.ended_by_bot


async def test_transfer_without_rest_credentials_leaves_twiml_for_the_fallback():
    brain = FixedBrain("Hi. ", answer=lambda caller: [TextDelta("Putting you through. "), ToolCall("transfer", {"to": "sip:desk@pbx.example.com", "summary": "rye"}, "1")])
    call, line, stt = await started(brain=brain)
    await echo_marks(call, line)
    await call.on_event(Dtmf(0, "0", "inbound_track"))
    await line.wait_for(lambda: len(line.marks()) >= 2)
    await echo_marks(call, line, line.marks()[1:])
    await asyncio.wait_for(line.hung_up.wait(), 2)
    assert "<Sip>sip:desk@pbx.example.com?X-Ivr-Summary=rye</Sip>" in line.transfer_twiml
    assert call.providers.brain.sessions[0].inputs[0][1].dtmf == "0"


async def test_silence_brings_reprompts_then_a_goodbye():
    call, line, stt = await started(CallOptions(reprompt_after_ms=1000, max_reprompts=1))
    await echo_marks(call, line)
    await feed(call, 1100)
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs)
    assert brain.inputs[0][1].text is None and brain.inputs[0][1].dtmf is None  # silence
    await line.wait_for(lambda: call._turn.done_generating)
    await echo_marks(call, line)
    await feed(call, 1100)
    await line.wait_for(lambda: call._ending)
    await line.wait_for(lambda: call._turn.done_generating)
    await echo_marks(call, line)
    await asyncio.wait_for(line.hung_up.wait(), 2)


async def test_a_broken_tts_costs_the_turn_not_the_call():
    class BrokenTts(InstantTts):
        def stream(self):
            raise RuntimeError("provider down")

    call, line, stt = await started(tts=BrokenTts())  # the greeting's turn fails
    assert "media" not in line.kinds()
    stt.push(EndOfTurn(text="hello?", at_ms=100))
    brain = call.providers.brain.sessions[0]
    await line.wait_for(lambda: brain.inputs)
    await asyncio.sleep(0.01)
    assert not call._main.done()  # the call goes on
    await call.close("test")


def test_engine_options_come_from_the_flow_file_and_typos_are_errors():
    from ivr.call.options import call_options
    from ivr.config import ConfigError

    opts = call_options({"barge_in": {"min_speech_ms": 250, "backchannels": ["Mhm"]}, "silence": {"reprompt_after": 5}, "voice": {"split": "sentence"}})
    assert (opts.min_speech_ms, opts.backchannels, opts.reprompt_after_ms, opts.split.strategy) == (250, ("mhm",), 5000, "sentence")
    with pytest.raises(ConfigError, match="barge_in"):
        call_options({"barge_in": {"min_speech": 3}})
    with pytest.raises(ConfigError, match="split"):
        call_options({"voice": {"split": "paragraph"}})


async def test_hanging_up_mid_sentence_frees_the_tts_at_once():
    class StallingStream(InstantTts().stream().__class__):
        async def push(self, text):  # accepted, never rendered
            self.n += 1
            return self.n - 1

    class StallingTts(InstantTts):
        def stream(self):
            s = StallingStream(self.ms_per_char)
            self.streams.append(s)
            return s

    tts = StallingTts()
    line = RecordingLine()
    call = Call(line, Providers(stt=ScriptedStt(), tts=tts, brain=FixedBrain(GREETING)))  # type: ignore[arg-type]
    await call.on_event(line.start)
    await line.wait_for(lambda: tts.streams)
    await call.close("stop")
    assert tts.streams[0].cancelled


async def test_a_reply_begun_on_an_eager_end_of_turn_is_spoken_when_the_turn_ends_so():
    from ivr.providers.base import EagerEndOfTurn, TurnResumed

    brain = FixedBrain(GREETING, answer=lambda caller: [TextDelta(f"You said {caller.text} ")])
    call, line, stt = await started(brain=brain)
    session = brain.sessions[0]
    session.speculative = True
    await echo_marks(call, line)
    stt.push(EagerEndOfTurn("rye bread", 500))
    await line.wait_for(lambda: session.inputs)
    n_media = line.kinds().count("media")
    await asyncio.sleep(0.02)
    assert line.kinds().count("media") == n_media  # prepared, not spoken
    stt.push(EndOfTurn("Rye bread.", 600))
    await line.wait_for(lambda: call._turn.done_generating and call._turn.number == 2)
    assert len(session.inputs) == 1  # the brain was asked once, early
    assert call._turn.ledger.pieces[0].text == "You said rye bread"

    # A guess the caller overrules: the early reply is dropped, the real turn answered.
    await echo_marks(call, line)
    stt.push(EagerEndOfTurn("sour", 900))
    await line.wait_for(lambda: len(session.inputs) == 2)
    stt.push(TurnResumed(950))
    stt.push(EndOfTurn("sourdough please", 1500))
    await line.wait_for(lambda: call._turn.number == 3 and call._turn.done_generating)
    assert [c.text for _, c in session.inputs] == ["rye bread", "sour", "sourdough please"]
    assert call._turn.ledger.pieces[0].text == "You said sourdough please"


async def test_a_stateful_brain_is_never_asked_early():
    from ivr.providers.base import EagerEndOfTurn

    call, line, stt = await started()
    await echo_marks(call, line)
    stt.push(EagerEndOfTurn("hours", 500))
    await asyncio.sleep(0.02)
    assert call.providers.brain.sessions[0].inputs == []
