"""One bot turn: its audio, where its sending has got to, what the caller heard of it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from ivr import loopbound
from ivr.call.ledger import HeardLedger
from ivr.providers.base import ToolCall, Turn, WordTiming


@dataclass
class TurnTiming:
    """Where one answer's time went; monotonic seconds. Speech end is when the audio in which
    the caller stopped speaking reached us."""

    speech_end_at: float | None
    end_of_turn_at: float
    brain_first_at: float | None = None
    first_audio_at: float | None = None


@dataclass
class CallStats:
    """Figures for benchmarks and reports: times are monotonic seconds."""

    start_at: float = 0.0
    greeting_first_audio_at: float | None = None
    answers: list[TurnTiming] = field(default_factory=list)
    #: Bot turns given up because the caller really interrupted them.
    barge_ins: int = 0
    #: Times the bot went quiet for speech over it, and of those, false alarms it carried on from.
    pauses: int = 0
    resumes: int = 0
    #: When the bot hung up or handed the call on (after its last words played).
    handed_over_at: float | None = None


class BotTurn:
    """The frames are made (brain -> TTS) into `frames` as fast as the providers go; the pacer
    sends them from `cursor` on, a small lead ahead of the caller's ear."""

    def __init__(self, number: int, ear: Callable[[], int] | None = None) -> None:
        self.number = number
        self.ledger = HeardLedger()
        self.frames: list[bytes] = []
        #: Next frame to send; a clear that cut frame n sets it back to n (nothing heard twice).
        self.cursor = 0
        #: Next piece whose mark is still to be sent.
        self.next_mark = 0
        #: Resumes after a clear: mark names carry it, so an old echo never confirms a new send.
        self.resumes = 0
        self.gate_open = True
        self.paused = False
        self.produced = False  # making frames has stopped: every frame there will be is in `frames`
        self.made_whole = False  # and it stopped because the turn was made to its end
        self.changed = loopbound.Event()
        self.task: asyncio.Task | None = None
        self.tools: list[ToolCall] = []
        self.first_audio_at: float | None = None
        self.started_at = time.monotonic()
        #: Brain and TTS are done with this turn (it may still be playing).
        self.done_generating = False
        self.timing: TurnTiming | None = None
        self._ear = ear
        self._settled = False

    def notify(self) -> None:
        self.changed.set()

    def add_frames(self, index: int, frames: list[bytes], words: tuple[WordTiming, ...] = ()) -> None:
        if frames:
            self.frames.extend(frames)
            self.ledger.audio(index, len(frames), words)
            self.notify()

    def listen(self) -> None:
        """Bring the ledger up to what the caller has heard by now (until the turn is settled)."""
        if not self._settled and self._ear is not None:
            self.ledger.heard(self._ear())

    def settle(self) -> None:
        """Played out, or cut: what the caller heard of it will not change any more."""
        self.listen()
        self._settled = True

    def release(self) -> None:
        """A later turn has begun: this one's audio is never sent again, so let it go (a long
        call would otherwise hold every frame the bot ever said)."""
        self.gate_open = False
        self.frames = []
        self.cursor = 0

    def heard(self) -> Turn | None:
        """This turn as the caller heard it, for the history (None: nothing was said)."""
        self.listen()
        text, cut = self.ledger.heard_text()
        return Turn("bot", text, interrupted=cut) if text or cut else None

    def mark_name(self, piece: int) -> str:
        return f"t{self.number}-p{piece}"

    def sent_mark_name(self, piece: int) -> str:
        return self.mark_name(piece) + (f"-r{self.resumes}" if self.resumes else "")
