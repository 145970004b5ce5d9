"""Small dict events a `Call` publishes to an optional listener (the web phone, the capture).

The listener is a plain callable `listener(event: dict) -> None`, called on the event loop. It
must return at once (queue the event, write a line): it runs inside the engine's own steps. No
event is published per audio frame; a call publishes a few per turn:

    {"type": "state", "state": "listening"}
    {"type": "caller", "text": "what time are you open"}          at the end of a caller turn
    {"type": "bot", "turn": 2, "piece": 0, "mark": "t2-p0", "text": "We're open ..."}
                                                                   a bot piece, before its audio
    {"type": "cut", "turn": 2, "reason": "barge-in", "heard": "We're open", "pieces": [
        {"piece": 0, "mark": "t2-p0", "text": "We're open Tuesday ...", "heard": "We're open"}]}
    {"type": "latency", "turn": 2, "total_ms": 812.0, "stt_ms": 301.2, "brain_ms": 2.1,
     "tts_ms": 508.7}                                               an answer's first audio
    {"type": "latency", "turn": 1, "greeting": true, "total_ms": 35.0}
    {"type": "tool", "turn": 3, "name": "transfer", "arguments": {"to": "+15550100123"}}
                                                                   a tool the turn runs (hangup,
                                                                   transfer, ...), once its words are out
    {"type": "ended", "reason": "stop"}

Times are milliseconds between the engine's own monotonic readings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ivr.call.turn import BotTurn, TurnTiming

Listener = Callable[[dict], None]


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 1)


def cut_event(turn: "BotTurn", reason: str) -> dict:
    """What the caller heard of each piece of a turn that was just cut."""
    ledger = turn.ledger
    heard, _cut = ledger.heard_text()
    first_unheard = ledger.first_unheard
    whole = " ".join(p.text for p in ledger.pieces[:first_unheard] if p.text)
    partial = heard[len(whole) :].strip()
    pieces = []
    for i, p in enumerate(ledger.pieces):
        if not p.text:
            continue  # a DTMF piece
        said = p.text if i < first_unheard else partial if i == first_unheard else ""
        pieces.append({"piece": i, "mark": turn.mark_name(i), "text": p.text, "heard": said})
    return {"type": "cut", "turn": turn.number, "reason": reason, "heard": heard, "pieces": pieces}


def latency_event(turn_number: int, timing: "TurnTiming") -> dict:
    """Where an answer's time went: caller speech end -> end of turn -> brain -> first audio."""
    start = timing.speech_end_at if timing.speech_end_at is not None else timing.end_of_turn_at
    return {
        "type": "latency",
        "turn": turn_number,
        "total_ms": _ms(start, timing.first_audio_at),
        "stt_ms": _ms(timing.speech_end_at, timing.end_of_turn_at),
        "brain_ms": _ms(timing.end_of_turn_at, timing.brain_first_at),
        "tts_ms": _ms(timing.brain_first_at, timing.first_audio_at),
    }
