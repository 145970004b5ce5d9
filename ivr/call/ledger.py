"""Which of the bot's words the caller actually heard.

A bot turn's audio is one run of 20 ms frames; each piece of text owns a stretch of them. The
engine's playout clock (ivr.call.playout) says how many of the turn's frames the caller has heard
whole, confirmed and corrected by the carrier's mark echoes when it has them: that is all the
ledger needs, so it stays exact to the word whether marks come on time, late or never.

Pieces heard to their last frame count whole. In the piece where the caller stopped hearing (a
barge-in, the call's end), words count up to that point: by the TTS's word timings where it gives
them, else in proportion to characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ivr.audio import FRAME_MS
from ivr.providers.base import WordTiming


@dataclass
class Piece:
    index: int
    text: str
    first_frame: int = 0
    frames: int = 0
    #: The mark sent after its last frame (empty until the piece is complete).
    mark: str = ""
    words: list[WordTiming] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.mark)

    @property
    def audio_ms(self) -> int:
        return self.frames * FRAME_MS

    @property
    def end_frame(self) -> int:
        return self.first_frame + self.frames


class HeardLedger:
    """One per bot turn."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        #: Frames of the turn the caller has heard whole, from the start.
        self.heard_frames = 0
        self.cut = False
        self._made = 0
        #: After heard_text(): the index of the first piece not heard whole.
        self.first_unheard = 0

    @property
    def total_frames(self) -> int:
        return self._made

    def add(self, index: int, text: str) -> Piece:
        """A piece of text, known before its audio (which starts where the audio made by then ends)."""
        piece = Piece(index=index, text=text)
        self.pieces.append(piece)
        return piece

    def piece(self, index: int) -> Piece:
        return self.pieces[index]

    def audio(self, index: int, frames: int, words: tuple[WordTiming, ...] = ()) -> None:
        """`frames` more frames of piece `index` were made; `words` are timed from their start."""
        piece = self.pieces[index]
        if not piece.frames:
            piece.first_frame = self._made
        self._made += frames
        if words:
            base = piece.audio_ms
            piece.words.extend(WordTiming(w.word, w.start_ms + base, w.end_ms + base) for w in words)
        piece.frames += frames

    def complete(self, index: int, mark: str) -> None:
        piece = self.pieces[index]
        if not piece.frames:
            piece.first_frame = self._made
        piece.mark = mark

    def heard(self, frames: int) -> None:
        """The caller has heard the turn's first `frames` frames (never goes back)."""
        self.heard_frames = max(self.heard_frames, frames)

    def cut_short(self) -> None:
        """The turn was stopped: what was not heard by now never will be."""
        self.cut = True

    @property
    def all_heard(self) -> bool:
        return bool(self.pieces) and all(p.complete for p in self.pieces) and self.heard_frames >= self.total_frames

    def heard_text(self) -> tuple[str, bool]:
        """(What the caller heard so far, whether the turn was cut short of its end)."""
        heard: list[str] = []
        self.first_unheard = 0
        for p in self.pieces:
            if p.complete and p.end_frame <= self.heard_frames:
                if p.text:
                    heard.append(p.text)
                self.first_unheard += 1
                continue
            played_ms = max(0, self.heard_frames - p.first_frame) * FRAME_MS
            partial = self._words_within(p, played_ms) if p.frames and played_ms else ""
            if partial:
                heard.append(partial)
            break
        return " ".join(heard), self.cut and self.first_unheard < len(self.pieces)

    @staticmethod
    def _words_within(p: Piece, played_ms: float) -> str:
        if p.words:
            return " ".join(w.word for w in p.words if w.end_ms <= played_ms)
        # No timings: assume speech spreads evenly over the characters; keep only whole words.
        words = p.text.split()
        total = sum(len(w) + 1 for w in words)
        budget = total * min(played_ms, p.audio_ms) / p.audio_ms
        kept, used = [], 0
        for w in words:
            used += len(w) + 1
            if used > budget:
                break
            kept.append(w)
        return " ".join(kept)
