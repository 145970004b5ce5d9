"""What the bot said, in the words the caller heard, keyed by the marks it sent.

Each piece a bot turn speaks ends with a mark; a call's ledgers know the text behind each mark
and how much of a cut piece was heard. Given when each mark's audio finished playing (on any
clock: a replayed call's, or a web phone's), this tells what the bot said in a stretch of time.
"""

from __future__ import annotations

from typing import Iterable

from ivr.call.turn import BotTurn


def heard_by_mark(turns: Iterable[BotTurn]) -> dict[str, str]:
    """mark name -> the words of its piece that the caller heard (empty if none)."""
    out: dict[str, str] = {}
    for turn in turns:
        ledger = turn.ledger
        heard, _cut = ledger.heard_text()
        whole = " ".join(p.text for p in ledger.pieces[: ledger.first_unheard] if p.text)
        partial = heard[len(whole) :].strip()
        for i, piece in enumerate(ledger.pieces):
            if not piece.mark:
                continue
            if i < ledger.first_unheard:
                out[piece.mark] = piece.text
            elif i == ledger.first_unheard:
                out[piece.mark] = partial
            else:
                out[piece.mark] = ""
    return out
