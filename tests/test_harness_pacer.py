"""The frame pacer: one timer for every call's caller frames, calls on a common start grid."""

from __future__ import annotations

import asyncio
import time

from ivr.harness.clock import START_GRID_S, TIMER_RESOLUTION_S, FramePacer

FRAME_S = 0.020


def test_start_points_fall_on_the_grid_and_never_before_now():
    for now in (1234.5678901, 0.0001, 98765.4321, 17.0):
        start = FramePacer.start_at(now)
        steps = start / START_GRID_S
        assert abs(steps - round(steps)) < 1e-6
        assert now <= start < now + START_GRID_S


async def test_calls_started_on_one_grid_point_share_each_wake_up_in_the_order_they_came():
    pacer = FramePacer()
    t0 = pacer.start_at(time.monotonic() + 0.01)
    passes: dict[float, list[str]] = {}
    dues: set[float] = set()
    finished = asyncio.Event()

    def call(name: str, frames: int):
        sent = 0

        def send(now: float) -> float | None:
            nonlocal sent
            passes.setdefault(now, []).append(name)
            sent += 1
            if sent == frames:
                if name == "c":
                    finished.set()
                return None
            # The same instant from each call's own clock arithmetic may differ in its last
            # bits (here by a few nanoseconds a call), and still shares a pass.
            due = t0 + sent * FRAME_S + "abc".index(name) * 3e-9
            dues.add(due)
            return due

        return send

    for name in ("a", "b", "c"):
        pacer.add(t0, call(name, 5))
    await asyncio.wait_for(finished.wait(), 2)
    assert len(dues) == 3 * 4  # the calls' due times really differ
    assert list(passes.values()) == [["a", "b", "c"]] * 5


async def test_a_late_call_sends_one_frame_a_pass_and_lets_others_run_between():
    pacer = FramePacer()
    loop = asyncio.get_running_loop()
    start = time.monotonic() - 10 * FRAME_S  # ten frames behind already
    events: list[str] = []
    done = asyncio.Event()
    k = 0

    def send(now: float) -> float | None:
        nonlocal k
        events.append("frame")
        loop.call_soon(events.append, "other")  # work that became ready meanwhile
        k += 1
        if k == 4:
            done.set()
            return None
        return start + k * FRAME_S

    pacer.add(start, send)
    await asyncio.wait_for(done.wait(), 2)
    await asyncio.sleep(0)
    assert events == ["frame", "other"] * 4


async def test_frames_go_out_on_their_own_clock_not_earlier():
    pacer = FramePacer()
    t0 = pacer.start_at(time.monotonic() + 0.005)
    sent_at: list[float] = []
    done = asyncio.Event()

    def send(now: float) -> float | None:
        sent_at.append(time.monotonic())
        if len(sent_at) == 10:
            done.set()
            return None
        return t0 + len(sent_at) * FRAME_S

    pacer.add(t0, send)
    await asyncio.wait_for(done.wait(), 3)
    for i, at in enumerate(sent_at):
        assert at >= t0 + i * FRAME_S - TIMER_RESOLUTION_S - 1e-4
