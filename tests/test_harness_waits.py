"""The emulator's own waits: mark echoes on one timer, and plan steps woken only when the bot's
audio can bring their answer sooner.

The event loop's timers may fire up to a millisecond early (uvloop's clock is whole milliseconds,
read once per pass). A wait set again for the fraction left fired at once, over and over: a mark
echo cost a dozen or more loop passes under `ivr load`. These run on uvloop, where it shows.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ivr.harness.clock import TIMER_RESOLUTION_S, timer_delay
from ivr.harness.emulator import TwilioEmulator, ReplayOptions
from ivr.harness.plan import CallPlan

LOUD = b"\x00" * 160  # mu-law 0x00: full scale
QUIET = b"\xff" * 160  # mu-law 0xff: silence


class RecordingSocket:
    """The emulator's connection, keeping what it sends."""

    read_batch = None  # read as messages arrive (a load run's batch would take it)

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []

    def send_now(self, message) -> bool:
        self.sent.append((time.monotonic(), message))
        return True


def emulator(loop: asyncio.AbstractEventLoop | None = None) -> TwilioEmulator:
    """An emulator whose call has started (on `loop`, as run() would set it), without a bot."""
    em = TwilioEmulator(CallPlan(name="waits", kind="script", source="test", steps=[]), ReplayOptions(url="ws://127.0.0.1:9/media"))
    em._ws = RecordingSocket()
    em._loop = loop
    em.clock.start()
    return em


def test_a_wait_shorter_than_the_timers_resolution_is_given_the_resolution():
    assert timer_delay(0.0003) == TIMER_RESOLUTION_S
    assert timer_delay(0.0) == TIMER_RESOLUTION_S
    assert timer_delay(0.25) == 0.25


def test_a_mark_due_within_a_timer_tick_is_echoed_once_after_at_most_two_wake_ups():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        em = emulator(asyncio.get_running_loop())
        fires = 0
        echo_due = em._echo_due_marks

        def counted() -> None:
            nonlocal fires
            fires += 1
            echo_due()

        em._echo_due_marks = counted
        now = em.clock.now_ms()
        em.playback.on_media(now, b"\xff" * 3)  # 0.375 ms of audio still to play
        assert em.playback.on_mark(now, "end-of-piece") == []
        due = em.playback.next_due_ms()
        em._arm_marks()
        await asyncio.sleep(0.05)
        return em, fires, due

    em, fires, due = uvloop.run(main())
    sent = em._ws.sent
    assert len(sent) == 1 and "end-of-piece" in sent[0][1]
    assert em.playback.marks[0].outcome == "played" and em.playback.marks[0].echoed_ms >= due
    # Re-armed for the fraction of a millisecond left, the timer fired dozens of times.
    assert fires <= 2, fires


def test_marks_are_echoed_in_order_each_when_its_audio_has_played():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        em = emulator(asyncio.get_running_loop())
        now = em.clock.now_ms()
        for i in range(3):
            em.playback.on_media(now, QUIET * 2)  # 40 ms each, queued one after another
            em.playback.on_mark(now, f"piece-{i}")
            em._arm_marks()
        await asyncio.sleep(0.2)
        return em

    em = uvloop.run(main())
    names = [m for _, m in em._ws.sent]
    pieces = ["piece-0", "piece-1", "piece-2"]
    assert [next(p for p in pieces if p in m) for m in names] == pieces  # each once, in order
    for mark in em.playback.marks:
        assert mark.outcome == "played" and mark.echoed_ms >= mark.due_ms


def test_a_clear_echoes_pending_marks_and_a_later_mark_gets_its_own_timer():
    uvloop = pytest.importorskip("uvloop")

    async def main():
        em = emulator(asyncio.get_running_loop())
        now = em.clock.now_ms()
        em.playback.on_media(now, QUIET * 50)  # a second of audio: its mark is far off
        em.playback.on_mark(now, "long")
        em._arm_marks()
        await asyncio.sleep(0.01)
        for mark in em.playback.on_clear(em.clock.now_ms()):
            em._echo(mark.name)
        now = em.clock.now_ms()
        em.playback.on_media(now, QUIET)  # 20 ms, due long before the old timer
        em.playback.on_mark(now, "short")
        em._arm_marks()
        await asyncio.sleep(0.1)
        return em

    em = uvloop.run(main())
    names = [m for _, m in em._ws.sent]
    assert len(names) == 2 and "long" in names[0] and "short" in names[1]
    short = em.playback.marks[1]
    assert short.outcome == "played" and short.echoed_ms < 100  # not held until the old 1 s timer


def test_more_speech_after_speech_that_counts_does_not_wake_a_waiting_step():
    em = emulator()
    em._reference_ms = 0.0
    playback = em.playback

    def queue(at_ms: float, payload: bytes) -> bool:
        changes, end = playback.voice_changes, playback.voiced[-1][1] if playback.voiced else 0
        playback.on_media(at_ms, payload)
        return em._answers_sooner(changes, end)

    assert queue(0.0, LOUD * 15) is True  # the bot's first words since the caller's: wake
    assert queue(300.0, LOUD * 5) is False  # the same stretch growing: the step's timer suffices
    assert queue(1000.0, LOUD * 5) is False  # a new stretch after a pause: only moves answers later
    assert len(playback.voiced) == 2


def test_a_new_stretch_wakes_a_step_when_only_speech_the_caller_cut_came_before():
    em = emulator()
    playback = em.playback
    playback.on_media(0.0, LOUD * 5)  # the bot from 0 to 100 ms
    em._reference_ms = 50.0  # the caller spoke over it; it stopped within the cut window
    changes, end = playback.voice_changes, playback.voiced[-1][1]
    playback.on_media(2000.0, LOUD * 5)  # the answer
    assert em._answers_sooner(changes, end) is True


def test_the_cut_speech_growing_past_the_cut_window_wakes_a_step():
    em = emulator()
    playback = em.playback
    playback.on_media(0.0, LOUD * 5)
    em._reference_ms = 50.0
    changes, end = playback.voice_changes, playback.voiced[-1][1]
    playback.on_media(100.0, LOUD * 15)  # the same stretch, on past 250 ms: it was not cut
    assert em._answers_sooner(changes, end) is True
