"""Twilio's side of the bot's audio, sans I/O: a playout queue on the call clock.

What Twilio does with what a bot sends (PROTOCOLS.md, section 1), modelled exactly:
- `media` is queued and played in real time, right after whatever is queued before it;
- a `mark` is echoed when the audio queued before it has played, at once if nothing is queued;
- `clear` drops the queued audio (what is playing stops now) and echoes every pending mark at once.

Times are call-clock milliseconds in, sample indices (8 per ms) inside, so arithmetic stays
exact over long calls. The caller of this class sends the echoes it returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ivr.audio import FRAME_BYTES, SAMPLE_RATE, ulaw_to_pcm16
from ivr.audio._audioop import audioop
from ivr.harness.speech import ulaw_pcm

SAMPLES_PER_MS = SAMPLE_RATE // 1000
#: Bot audio above this level counts as the bot speaking (TTS silence sits far below it).
BOT_VOICE_DBFS = -45.0
_BOT_VOICE_RMS = 32768 * 10 ** (BOT_VOICE_DBFS / 20)


def voiced_blocks(payload: bytes) -> list[int]:
    """Offsets of the 20 ms blocks of bot mu-law audio loud enough to be the bot speaking.

    audioop's RMS per block (as speech.frame_levels_db takes it), in C: this runs for every bot
    frame of every call under `ivr load`, where numpy's per-call overhead showed."""
    pcm = ulaw_to_pcm16(payload)
    if len(payload) <= FRAME_BYTES:  # one frame a message, as ivr sends: no slice to copy
        return [0] if audioop.rms(pcm, 2) > _BOT_VOICE_RMS else []
    return [i for i in range(0, len(payload), FRAME_BYTES)
            if audioop.rms(pcm[2 * i : 2 * (i + FRAME_BYTES)], 2) > _BOT_VOICE_RMS]


@dataclass(slots=True)
class BotMedia:
    """One `media` message from the bot: when it arrived and where it sits on the playout line."""

    recv_ms: float
    play_start: int  # sample index on the call clock
    payload: bytes
    kept: int  # samples actually played; less than len(payload) when a clear cut it

    @property
    def cut(self) -> bool:
        return self.kept < len(self.payload)


@dataclass(slots=True)
class MarkRecord:
    name: str
    sent_ms: float  # when the bot's mark arrived
    due_ms: float  # when the audio queued before it finishes playing
    echoed_ms: float | None = None
    outcome: str = "pending"  # "played" | "cleared" | "pending" (call ended first)


def to_sample(ms: float) -> int:
    return int(ms * SAMPLES_PER_MS)


def to_ms(sample: int) -> float:
    return sample / SAMPLES_PER_MS


class TwilioPlayback:
    def __init__(self) -> None:
        self.media: list[BotMedia] = []
        self.marks: list[MarkRecord] = []
        self.clears: list[float] = []
        #: Voiced stretches of what plays, [start, end) samples, merged across 20 ms gaps.
        self.voiced: list[list[int]] = []
        #: Counts the changes to `voiced` other than its last stretch growing longer: a new
        #: stretch, or a clear's cut. Growing only moves the edges later (see next_edge_ms).
        self.voice_changes = 0
        self._play_end = 0
        self._pending: deque[MarkRecord] = deque()

    # --- what the bot sends -------------------------------------------------------------------

    def on_media(self, now_ms: float, payload: bytes) -> BotMedia:
        # 50 times a second per call under `ivr load`: to_sample() inline, fields by position.
        start = max(int(now_ms * SAMPLES_PER_MS), self._play_end)
        item = BotMedia(now_ms, start, payload, len(payload))
        self.media.append(item)
        self._play_end = start + len(payload)
        self._add_voiced(start, payload)
        return item

    def on_mark(self, now_ms: float, name: str) -> list[MarkRecord]:
        """Queue a mark; returns it for echo at once if nothing is left to play."""
        now = to_sample(now_ms)
        mark = MarkRecord(name=name, sent_ms=now_ms, due_ms=to_ms(max(self._play_end, now)))
        self.marks.append(mark)
        if self._play_end <= now:
            return self._echo([mark], now_ms, "played")
        self._pending.append(mark)
        return []

    def on_clear(self, now_ms: float) -> list[MarkRecord]:
        """Drop what has not played yet; returns every pending mark for echo at once."""
        now = to_sample(now_ms)
        self.clears.append(now_ms)
        if self._play_end > now:
            for item in reversed(self.media):
                if item.play_start + len(item.payload) <= now:
                    break
                item.kept = max(0, min(item.kept, now - item.play_start))
            self._cut_voiced(now)
            self._play_end = now
        pending = list(self._pending)
        self._pending.clear()
        return self._echo(pending, now_ms, "cleared")

    # --- the clock moving on ------------------------------------------------------------------

    def due_marks(self, now_ms: float, early_ms: float = 0.0) -> list[MarkRecord]:
        """Marks whose audio has finished playing by `now_ms` (or will within `early_ms`), to
        echo now."""
        by = to_sample(now_ms + early_ms)
        due = []
        while self._pending and to_sample(self._pending[0].due_ms) <= by:
            due.append(self._pending.popleft())
        return self._echo(due, now_ms, "played")

    def next_due_ms(self) -> float | None:
        return self._pending[0].due_ms if self._pending else None

    # --- what the caller hears ----------------------------------------------------------------

    def queued_ms(self, now_ms: float) -> float:
        return max(0.0, to_ms(self._play_end) - now_ms)

    def speaking_at(self, now_ms: float) -> bool:
        now = to_sample(now_ms)
        for start, end in reversed(self.voiced):
            if start <= now < end:
                return True
            if end <= now:
                return False
        return False

    def voice_since(self, ref_ms: float, now_ms: float) -> list[tuple[float, float]]:
        """Voiced stretches that played (at least partly) after `ref_ms`, up to `now_ms`."""
        ref, now = to_sample(ref_ms), to_sample(now_ms)
        out = []
        # From the latest back to the first that ended by `ref`: the stretches are in order,
        # and a long call's early ones are never asked about again.
        for start, end in reversed(self.voiced):
            if end <= ref:
                break
            if start <= now:
                out.append((to_ms(start), to_ms(min(end, now))))
        out.reverse()
        return out

    def next_edge_ms(self, now_ms: float) -> float:
        """The first start or end of a voiced stretch after `now_ms` (inf if none): until then,
        what `speaking_at` and `voice_since` say changes only if the bot sends more."""
        now = to_sample(now_ms)
        edge = None
        for start, end in reversed(self.voiced):
            if end <= now:
                break
            edge = end if start <= now else start
        return float("inf") if edge is None else to_ms(edge)

    def heard_pcm(self, total_samples: int) -> np.ndarray:
        """The bot's audio as the caller heard it: each piece at its play time, cut at clears."""
        out = np.zeros(total_samples, dtype=np.int16)
        for item in self.media:
            n = min(item.kept, total_samples - item.play_start)
            if n > 0:
                out[item.play_start : item.play_start + n] = ulaw_pcm(item.payload[:n])
        return out

    def finish(self) -> None:
        """The call ended: marks never played stay 'pending'."""
        self._pending.clear()

    # --- internals ----------------------------------------------------------------------------

    @staticmethod
    def _echo(marks: list[MarkRecord], now_ms: float, outcome: str) -> list[MarkRecord]:
        for mark in marks:
            mark.echoed_ms = now_ms
            mark.outcome = outcome
        return marks

    def _add_voiced(self, start: int, payload: bytes) -> None:
        voiced = self.voiced
        end = start + len(payload)
        for i in voiced_blocks(payload):
            a = start + i
            b = min(a + FRAME_BYTES, end)
            last = voiced[-1] if voiced else None
            if last is not None and a <= last[1] + FRAME_BYTES:
                if b > last[1]:
                    last[1] = b
            else:
                voiced.append([a, b])
                self.voice_changes += 1

    def _cut_voiced(self, now: int) -> None:
        self.voice_changes += 1
        while self.voiced and self.voiced[-1][0] >= now:
            self.voiced.pop()
        if self.voiced and self.voiced[-1][1] > now:
            self.voiced[-1][1] = now
