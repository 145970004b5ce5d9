"""The end-of-turn figures shared by `ivr bench engines` and `ivr bench call`: paused callers
(`tests/samples/paused`: a pause of 0.7-1.0 s mid-sentence) and whether the turn was ended
before the sentence was over.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivr.audio import ulaw_to_pcm16


@dataclass(frozen=True)
class PausedCall:
    name: str
    text: str
    pauses_ms: tuple[int, ...]
    ulaw: bytes

    def last_part_start_ms(self) -> int:
        """Where the caller starts again after the last pause: a turn ended before this
        (and not at the very end) cut the caller off."""
        return speech_spans(self.ulaw)[-1][0]


def speech_spans(ulaw: bytes, min_gap_ms: int = 500) -> list[tuple[int, int]]:
    """(start, end) ms of the stretches of speech in a clean recording, split at gaps of at
    least `min_gap_ms` (10 ms blocks above 5 % of the loudest)."""
    x = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2").astype(np.float64)
    block = 80
    rms = np.sqrt((x[: len(x) // block * block].reshape(-1, block) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > 0.05 * rms.max())
    spans: list[list[int]] = []
    for i in loud:
        if spans and (i - spans[-1][1]) * 10 < min_gap_ms:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(int(a) * 10, int(b) * 10) for a, b in spans]


def load_paused(directory: str | Path) -> list[PausedCall]:
    directory = Path(directory)
    table = directory / "transcripts.tsv"
    if not table.is_file():
        return []
    calls = []
    for line in table.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            name, text, pauses = line.split("\t")
            calls.append(PausedCall(name, text, tuple(int(p) for p in pauses.split(",")), (directory / name).read_bytes()))
    return calls


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms" if values else "n/a"


async def paused_turns(stt, calls: list[PausedCall], tail_ms: int = 2500) -> dict:
    """Each paused caller fed in real time to a new session: which had their turn ended in a
    pause, and the turn model's decisions (when the session is gated)."""
    import asyncio

    from ivr.audio import ulaw_silence
    from ivr.providers.base import EndOfTurn
    from ivr.providers.feed import feed_call_audio

    cut, decisions = [], []
    for call in calls:
        session = await stt.open()
        events: list = []

        async def collect() -> None:
            async for event in session:
                events.append(event)

        reader = asyncio.create_task(collect())
        await feed_call_audio(session, call.ulaw + ulaw_silence(8 * tail_ms), realtime=True)
        await reader
        resumed_at = call.last_part_start_ms()
        if any(isinstance(e, EndOfTurn) and e.text and e.at_ms < resumed_at for e in events):
            cut.append(call.name)
        decisions += getattr(session, "decisions", [])
    return {"calls": len(calls), "cut": cut, "decisions": decisions}
