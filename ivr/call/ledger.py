"""Which of the bot's words the caller actually heard.

Twilio plays our audio from a buffer in real time and echoes each `mark` once the audio queued
before it has played, and also echoes every pending mark the moment it receives our `clear`. So
an echo means "played or dropped"; only its order against our `clear` tells which. A piece whose
mark came back before we sent `clear` was heard whole. For the piece cut by the `clear`, the
audio time played (from when its playback began to when we sent `clear`) says how much of it was
heard, and words are counted up to that point: by the TTS's word timings where it gives them,
else in proportion to characters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ivr.providers.base import WordTiming


@dataclass
class Piece:
    index: int
    text: str
    mark: str = ""
    audio_ms: int = 0
    first_sent_at: float | None = None
    marked_at: float | None = None
    echoed_at: float | None = None
    words: list[WordTiming] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.mark)


class HeardLedger:
    """One per bot turn. Times are monotonic seconds on the server's clock."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self._by_mark: dict[str, Piece] = {}
        self.cleared_at: float | None = None
        #: After heard_text(): the index of the first piece not heard whole.
        self.first_unheard = 0

    def add(self, index: int, text: str) -> Piece:
        piece = Piece(index=index, text=text)
        self.pieces.append(piece)
        return piece

    def piece(self, index: int) -> Piece:
        return self.pieces[index]

    def sent_audio(self, index: int, ms: int, now: float, words: tuple[WordTiming, ...] = ()) -> None:
        piece = self.pieces[index]
        if piece.first_sent_at is None:
            piece.first_sent_at = now
        if words:
            piece.words.extend(WordTiming(w.word, w.start_ms + piece.audio_ms, w.end_ms + piece.audio_ms) for w in words)
        piece.audio_ms += ms

    def marked(self, index: int, mark: str, now: float) -> None:
        piece = self.pieces[index]
        piece.mark = mark
        piece.marked_at = now
        self._by_mark[mark] = piece

    def echoed(self, mark: str, now: float) -> bool:
        """Twilio echoed `mark`. Returns False if the mark is not this turn's."""
        piece = self._by_mark.get(mark)
        if piece is None:
            return False
        if piece.echoed_at is None:
            piece.echoed_at = now
        return True

    def cleared(self, now: float) -> None:
        if self.cleared_at is None:
            self.cleared_at = now

    @property
    def all_played(self) -> bool:
        """Every piece so far was sent whole and its mark came back before any clear."""
        return bool(self.pieces) and all(
            p.echoed_at is not None and (self.cleared_at is None or p.echoed_at <= self.cleared_at) for p in self.pieces
        )

    def heard_text(self) -> tuple[str, bool]:
        """(What the caller heard, whether the turn was cut short).

        Pieces play one after another: a piece starts when it is first sent or when the one
        before it finishes, whichever is later. Without a clear, a piece counts once its mark is
        back. After a clear, a piece whose mark came back first was heard whole; so was one whose
        audio had time to finish before the clear (its echo crossed our clear on the wire); the
        first that had not is cut where the clear found it.
        """
        heard: list[str] = []
        prev_end: float | None = None
        cleared = self.cleared_at
        self.first_unheard = 0
        for p in self.pieces:
            if p.first_sent_at is None:
                break
            start = p.first_sent_at if prev_end is None else max(p.first_sent_at, prev_end)
            if p.echoed_at is not None and (cleared is None or p.echoed_at <= cleared):
                heard.append(p.text)
                prev_end = p.echoed_at
                self.first_unheard += 1
                continue
            if cleared is None:
                break  # still playing
            end = start + p.audio_ms / 1000
            if p.complete and end <= cleared:
                heard.append(p.text)
                prev_end = end
                self.first_unheard += 1
                continue
            played_ms = max(0.0, (cleared - start) * 1000)
            partial = self._words_within(p, min(played_ms, p.audio_ms)) if p.audio_ms else ""
            if partial:
                heard.append(partial)
            return " ".join(heard), True
        return " ".join(heard), cleared is not None and self.first_unheard < len(self.pieces)

    @staticmethod
    def _words_within(p: Piece, played_ms: float) -> str:
        if p.words:
            return " ".join(w.word for w in p.words if w.end_ms <= played_ms)
        # No timings: assume speech spreads evenly over the characters; keep only whole words.
        words = p.text.split()
        total = sum(len(w) + 1 for w in words)
        budget = total * played_ms / p.audio_ms
        kept, used = [], 0
        for w in words:
            used += len(w) + 1
            if used > budget:
                break
            kept.append(w)
        return " ".join(kept)
