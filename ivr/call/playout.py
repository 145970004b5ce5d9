"""The playout clock: which of the bot's frames the caller is hearing, reckoned by the engine itself.

A carrier such as Twilio plays what we send from a buffer, in real time, starting when it arrives.
So the engine can know, without asking, when each frame it sent plays: frame by frame from the
moment it was sent, or from the end of what was queued before it. This object keeps that
reckoning, sans I/O and on plain numbers (seconds on any monotonic clock):

- told: "sent frame `pos` of `owner` at t", "mark m sent at t", "mark m echoed at t", "cleared at t";
- answers: "how much is queued at t" (the pacer keeps that under a small lead), "which frame is
  playing at t", "how many frames of `owner` the caller has heard by t", "which marks are overdue".

Marks confirm the reckoning. Every echo comes back some transit time after its audio played, and
a `clear` reaches the carrier after the same one-way delay as the media did, so the clock counts
from the moment we send: it is right about the frame a clear cuts without knowing the network.
What an echo can reveal is the carrier playing *later* than that (its queue stalled): an echo
later than the earliest echo delay seen so far, by more than `tolerance_s`, moves every frame
queued after the mark later by the excess. An echo later than `margin_s` is not playback but a
slow or lossy link: the clock ignores it, and never waits for a mark that it holds overdue by more
than the margin. A carrier without marks (or a setting turning them off) gets the same clock with
nothing to confirm it.

`owner` is any int the caller chooses (the engine uses the bot turn's number) and `pos` its own
numbering of frames, so the answers come back in the sender's terms even after a clear and a
resume that sends some frames again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ivr.audio import FRAME_MS

FRAME_S = FRAME_MS / 1000
#: Float slack when comparing times that are sums of FRAME_S.
_EPS = 1e-6


@dataclass(slots=True)
class _Run:
    """Frames of one owner with consecutive positions that play back to back."""

    start: float
    owner: int
    first: int
    count: int

    @property
    def end(self) -> float:
        return self.start + self.count * FRAME_S


@dataclass(slots=True)
class _Mark:
    name: str
    due: float


@dataclass(frozen=True, slots=True)
class Cut:
    """The frame a clear cut: `owner`'s frame `pos`, of which `heard` (0..1) had played."""

    owner: int
    pos: int
    heard: float

    @property
    def resume_pos(self) -> int:
        """Where to go on from without repeating or skipping more than half a frame (10 ms)."""
        return self.pos + 1 if self.heard >= 0.5 else self.pos


class PlayoutClock:
    def __init__(self, margin_s: float = 0.5, tolerance_s: float = 0.04, keep_runs: int = 256) -> None:
        self.margin_s = margin_s
        self.tolerance_s = tolerance_s
        self._runs: deque[_Run] = deque(maxlen=keep_runs)
        self._end = 0.0  # when everything sent so far has played
        self._marks: dict[str, _Mark] = {}
        self._forgotten: deque[str] = deque(maxlen=64)
        #: The smallest echo delay seen: the round trip, which says nothing about playback.
        self._floor: float | None = None
        #: Marks echoed later than the clock expected but within the margin (the clock moved).
        self.corrections = 0
        #: Marks echoed after the margin or never: the link is slow or has no marks.
        self.late_echoes = 0

    # --- told -------------------------------------------------------------------------------

    def sent(self, at: float, owner: int, pos: int) -> float:
        """Frame `pos` of `owner` went to the line at `at`; returns when it starts playing."""
        start = max(at, self._end)
        last = self._runs[-1] if self._runs else None
        if last is not None and last.owner == owner and last.first + last.count == pos and abs(last.end - start) < _EPS:
            last.count += 1
        else:
            self._runs.append(_Run(start, owner, pos, 1))
        self._end = start + FRAME_S
        return start

    def mark(self, name: str, at: float) -> float:
        """A mark went to the line after the frames sent so far; returns when it is due back."""
        due = max(at, self._end)
        self._marks[name] = _Mark(name, due)
        return due

    def echoed(self, name: str, at: float) -> str:
        """The carrier echoed a mark: 'on time', 'corrected' (the clock moved), 'late' (ignored
        for timing) or 'unknown' (not pending: returned by a clear, or not ours)."""
        mark = self._marks.pop(name, None)
        if mark is None:
            if name in self._forgotten:
                self.late_echoes += 1
                return "late"
            return "unknown"
        delay = at - mark.due
        if delay > self.margin_s:
            self.late_echoes += 1
            return "late"
        if self._floor is None or delay < self._floor:
            self._floor = delay
        excess = delay - self._floor
        if excess <= self.tolerance_s:
            return "on time"
        self._shift(mark.due, excess)
        self.corrections += 1
        return "corrected"

    def cleared(self, at: float) -> Cut | None:
        """Everything queued is dropped at `at`; returns the frame that was playing, if any.
        Marks still pending come back from the carrier as echoes of nothing: forgotten here."""
        cut = None
        while self._runs and self._runs[-1].start >= at - _EPS:
            self._runs.pop()
        if self._runs and self._runs[-1].end > at + _EPS:
            run = self._runs[-1]
            into = (at - run.start) / FRAME_S
            k = int(into)
            cut = Cut(run.owner, run.first + k, into - k)
            run.count = k  # frames from the cut one on never played whole
            if run.count == 0:
                self._runs.pop()
        self._end = min(self._end, at)
        self._marks.clear()
        return cut

    # --- answers ----------------------------------------------------------------------------

    def queued(self, at: float) -> float:
        """Seconds of audio sent but not yet played at `at` (the lead over the caller's ear)."""
        return max(0.0, self._end - at)

    @property
    def played_out_at(self) -> float:
        """When everything sent so far has played (by the clock alone)."""
        return self._end

    def settled_at(self) -> float:
        """When the clock holds everything played and confirmed: the end of the audio, or a
        pending mark's due time plus the margin, whichever is later."""
        last = max((m.due for m in self._marks.values()), default=0.0)
        return max(self._end, last + self.margin_s if self._marks else 0.0)

    def busy(self, at: float) -> bool:
        """Something sent is still (as far as the clock and its marks know) playing at `at`."""
        return self.settled_at() > at + _EPS

    def playing(self, at: float) -> tuple[int, int] | None:
        """(owner, pos) of the frame playing at `at`, or None in silence."""
        for run in reversed(self._runs):
            if run.start <= at + _EPS:
                if at < run.end - _EPS:
                    return run.owner, run.first + int((at - run.start + _EPS) / FRAME_S)
                return None
        return None

    def played(self, owner: int, at: float) -> int:
        """How many of `owner`'s frames the caller has heard whole by `at`: one more than the
        highest position that has finished playing (0: none)."""
        best = 0
        for run in self._runs:
            if run.owner != owner or run.start > at + _EPS:
                continue
            n = min(run.count, math.floor((at - run.start) / FRAME_S + _EPS))
            if n > 0:
                best = max(best, run.first + n)
        return best

    def overdue(self, at: float) -> list[str]:
        """Marks whose echo the clock expected more than the margin ago."""
        return [m.name for m in self._marks.values() if at - m.due > self.margin_s]

    def forget(self, names: list[str]) -> None:
        """Stop waiting for these marks (the engine has gone by the clock)."""
        for name in names:
            if self._marks.pop(name, None) is not None:
                self._forgotten.append(name)

    # --- internals --------------------------------------------------------------------------

    def _shift(self, due: float, delay: float) -> None:
        """The carrier is `delay` behind the clock from `due` on: move later what plays after."""
        runs: list[_Run] = []
        for run in self._runs:
            if run.start >= due - _EPS:
                run.start += delay
            elif run.end > due + _EPS:
                k = round((due - run.start) / FRAME_S)
                if 0 < k < run.count:
                    runs.append(_Run(run.start, run.owner, run.first, k))
                    run = _Run(run.start + k * FRAME_S + delay, run.owner, run.first + k, run.count - k)
            runs.append(run)
        self._runs = deque(runs, maxlen=self._runs.maxlen)
        self._end += delay
        for mark in self._marks.values():
            if mark.due >= due - _EPS:
                mark.due += delay
