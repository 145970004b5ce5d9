"""Cut streamed brain text into pieces worth sending to TTS, as early as they read well.

A piece ends at a sentence end, or (strategy "clause") also at a clause break, once it holds at
least `min_chars`; a piece that reaches `max_chars` without a break is cut at the last space. The
first piece of a turn may be shorter (`first_min_chars`) so speech starts early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["sentence", "clause", "word", "fixed"]

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"(?:[.!?…]+[\"')\]]*|[,;:—–])\s")
# Abbreviations and numbers that end in a dot without ending a sentence.
_NOT_AN_END = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|vs|etc|e\.g|i\.e|No|Inc|Ltd|a\.m|p\.m)|\d)\.$", re.IGNORECASE)


@dataclass(frozen=True)
class SplitOptions:
    strategy: Strategy = "clause"
    min_chars: int = 20
    first_min_chars: int = 8
    max_chars: int = 200

    def __post_init__(self) -> None:
        if self.strategy not in ("sentence", "clause", "word", "fixed"):
            raise ValueError(f"unknown split strategy {self.strategy!r}: sentence, clause, word or fixed")
        if not (0 < self.first_min_chars and 0 < self.min_chars <= self.max_chars):
            raise ValueError("split sizes must satisfy 0 < min_chars <= max_chars")


class TextSplitter:
    def __init__(self, options: SplitOptions | None = None) -> None:
        self.options = options or SplitOptions()
        self._buf = ""
        self._pieces = 0

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the pieces it completes."""
        self._buf += text
        out: list[str] = []
        while True:
            piece = self._next_piece()
            if piece is None:
                return out
            out.append(piece)

    def flush(self) -> list[str]:
        """The rest of the turn's text, as a last piece."""
        rest = self._buf.strip()
        self._buf = ""
        if not rest:
            return []
        self._pieces += 1
        return [rest]

    def _min(self) -> int:
        return self.options.first_min_chars if self._pieces == 0 else self.options.min_chars

    def _next_piece(self) -> str | None:
        o = self.options
        buf = self._buf
        cut = None
        if o.strategy == "fixed":
            if len(buf) >= o.max_chars:
                cut = self._space_before(o.max_chars)
        elif o.strategy == "word":
            m = re.search(r"\s", buf[self._min() :]) if len(buf) > self._min() else None
            if m:
                cut = self._min() + m.end()
        else:
            pattern = _SENTENCE_END if o.strategy == "sentence" else _CLAUSE_END
            for m in pattern.finditer(buf):
                if m.end() < self._min():
                    continue
                if _NOT_AN_END.search(buf[: m.end()].rstrip()):
                    continue
                cut = m.end()
                break
            if cut is None and len(buf) >= o.max_chars:
                cut = self._space_before(o.max_chars)
        if cut is None:
            return None
        piece, self._buf = buf[:cut].strip(), buf[cut:]
        if not piece:
            return None
        self._pieces += 1
        return piece

    def _space_before(self, limit: int) -> int:
        space = self._buf.rfind(" ", 0, limit)
        return space + 1 if space > 0 else limit
