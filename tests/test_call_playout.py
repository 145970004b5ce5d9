"""The playout clock, the interruption policy and the turn-taking table: plain numbers, no I/O."""

import pytest

from ivr.call.interruption import DEFAULT_BACKCHANNELS, Interruption, InterruptionRules, Verdict, is_backchannel
from ivr.call.playout import FRAME_S, PlayoutClock
from ivr.call.turns import TABLE, Action, CallState, Event, TurnTaking

F = FRAME_S


def send(clock, at, owner, first, n):
    for i in range(n):
        clock.sent(at, owner, first + i)


def test_frames_sent_at_once_play_back_to_back_from_the_first_send():
    c = PlayoutClock()
    send(c, 10.0, 1, 0, 50)  # one second of audio sent in a burst
    assert c.queued(10.0) == pytest.approx(1.0)
    assert c.playing(10.0) == (1, 0)
    assert c.playing(10.5 + F / 2) == (1, 25)
    assert c.played(1, 10.5) == 25
    assert c.played(1, 12.0) == 50 and c.playing(12.0) is None
    assert c.played_out_at == pytest.approx(11.0)


def test_a_gap_in_sending_is_silence_on_the_line():
    c = PlayoutClock()
    send(c, 0.0, 1, 0, 10)  # plays 0.0-0.2
    send(c, 1.0, 1, 10, 10)  # the queue ran dry: plays 1.0-1.2
    assert c.playing(0.5) is None
    assert c.played(1, 0.5) == 10
    assert c.playing(1.1 + F / 2) == (1, 15)


def test_clear_names_the_cut_frame_and_resume_neither_repeats_nor_skips_more_than_half_a_frame():
    c = PlayoutClock()
    send(c, 0.0, 7, 0, 100)
    cut = c.cleared(0.505)  # a quarter into frame 25
    assert (cut.owner, cut.pos) == (7, 25) and cut.heard == pytest.approx(0.25)
    assert cut.resume_pos == 25
    assert c.queued(0.6) == 0 and c.played(7, 5.0) == 25
    # Resumed from frame 25: the caller hears 25.. next, and the counts stay in the turn's terms.
    send(c, 1.5, 7, 25, 10)
    assert c.playing(1.5) == (7, 25) and c.played(7, 1.7) == 35
    assert PlayoutClock().cleared(3.0) is None


def test_echoes_late_by_their_round_trip_confirm_a_stalled_carrier_moves_the_clock_a_lost_one_is_ignored():
    c = PlayoutClock(margin_s=0.5, tolerance_s=0.04)
    send(c, 0.0, 1, 0, 50)
    assert c.mark("a", 0.0) == pytest.approx(1.0)
    send(c, 0.0, 1, 50, 50)
    assert c.mark("b", 0.0) == pytest.approx(2.0)
    send(c, 0.0, 1, 100, 50)
    assert c.mark("c", 0.0) == pytest.approx(3.0)
    assert c.busy(2.9) and c.settled_at() == pytest.approx(3.5)
    assert c.echoed("a", 1.03) == "on time"  # 30 ms: the round trip, nothing about playback
    assert c.played_out_at == pytest.approx(3.0) and c.playing(1.0 + F / 2) == (1, 50)
    assert c.echoed("b", 2.23) == "corrected"  # 200 ms more than the round trip: the carrier stalled
    assert c.played_out_at == pytest.approx(3.2)
    assert c.playing(2.1) is None and c.playing(2.2 + F / 2) == (1, 100)  # later by the stall
    assert c.played(1, 2.1) == 100
    assert c.echoed("c", 5.0) == "late"  # a lossy link, not playback: the clock stays
    assert c.played_out_at == pytest.approx(3.2) and c.late_echoes == 1
    assert c.echoed("c", 5.1) == "unknown"
    assert c.corrections == 1


def test_marks_never_echoed_are_overdue_after_the_margin_and_the_clock_goes_on():
    c = PlayoutClock(margin_s=0.5)
    send(c, 0.0, 1, 0, 50)
    c.mark("t1-p0", 0.0)
    assert c.overdue(1.4) == [] and c.busy(1.4)
    assert c.overdue(1.6) == ["t1-p0"]
    c.forget(c.overdue(1.6))
    assert not c.busy(1.6)
    assert c.echoed("t1-p0", 3.5) == "late" and c.late_echoes == 1  # it came after all


def test_clear_forgets_pending_marks_so_their_echoes_confirm_nothing():
    c = PlayoutClock()
    send(c, 0.0, 1, 0, 50)
    c.mark("m", 0.0)
    c.cleared(0.3)
    assert c.echoed("m", 0.31) == "unknown" and not c.busy(0.31)


BC = frozenset({"okay", "uh-huh", "yeah", "right", "mm"})


@pytest.mark.parametrize("text,expected", [("Okay?", True), ("Uh-huh.", True), ("Yeah, right!", True), ("", True),
                                           ("okay but what about Sunday", False), ("Sunday", False)])
def test_backchannels_ignore_punctuation(text, expected):
    assert is_backchannel(text, BC) is expected


@pytest.mark.parametrize("text,expected", [("I, ah,", True), ("Mm-hm.", True), ("I see.", True),
                                           ("I need to change my order.", False), ("I'm calling about Sunday", False)])
def test_the_default_backchannels_take_a_misheard_murmur_but_not_a_sentence(text, expected):
    assert is_backchannel(text, frozenset(DEFAULT_BACKCHANNELS)) is expected


def test_a_backchannel_resumes_as_soon_as_its_word_is_in_and_the_caller_is_quiet():
    i = Interruption(InterruptionRules(BC), at=0.0)
    assert i.heard("Okay.", turn_over=False, speaking=True, at=0.4) is Verdict.WAIT
    i2 = Interruption(InterruptionRules(BC), at=0.0)
    assert i2.heard("Okay.", turn_over=False, speaking=False, at=0.6) is Verdict.RESUME


def test_real_words_or_long_speech_cancel_and_a_wordless_sound_resumes_once_quiet():
    assert Interruption(InterruptionRules(BC), 0.0).heard("Wait, Sunday?", False, True, 0.5) is Verdict.CANCEL
    long = Interruption(InterruptionRules(BC, confirm_after_ms=1500), 0.0)
    assert long.tick(True, 1.0) is Verdict.WAIT and long.tick(True, 1.5) is Verdict.CANCEL
    cough = Interruption(InterruptionRules(BC, resume_after_ms=900, short_ms=700), 0.0)
    assert cough.tick(True, 0.8) is Verdict.WAIT  # longer than a murmur: wait for its words
    assert cough.tick(False, 1.0) is Verdict.WAIT and cough.tick(False, 1.5) is Verdict.WAIT
    assert cough.tick(False, 1.95) is Verdict.RESUME
    murmur = Interruption(InterruptionRules(BC, short_ms=700), 0.0)
    assert murmur.tick(True, 0.3) is Verdict.WAIT and murmur.tick(False, 0.45) is Verdict.RESUME
    assert Interruption(InterruptionRules(BC), 0.0).heard("", True, False, 0.8) is Verdict.RESUME
    assert Interruption(InterruptionRules(BC, resume=False), 0.0).verdict is Verdict.CANCEL


def test_the_turn_table_pauses_then_resumes_or_cancels():
    t = TurnTaking(CallState.SPEAKING)
    assert t.fire(Event.CALLER_SPEECH) == (Action.PAUSE,) and t.state is CallState.PAUSED
    assert t.fire(Event.FALSE_ALARM) == (Action.RESUME,) and t.state is CallState.SPEAKING
    t.fire(Event.CALLER_SPEECH)
    assert t.fire(Event.INTERRUPTED) == (Action.CANCEL,) and t.state is CallState.LISTENING
    assert t.fire(Event.CALLER_SPEECH) == () and t.state is CallState.LISTENING  # nothing to pause
    assert t.fire(Event.CALLER_TURN) == () and t.state is CallState.THINKING
    t.fire(Event.HANG_UP)
    assert t.fire(Event.CALLER_TURN) == () and t.state is CallState.ENDING
    assert all((s, Event.CLOSED) in TABLE for s in CallState)
