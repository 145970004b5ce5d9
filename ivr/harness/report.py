"""report.json: what a replayed call measured, all times in ms on the call clock.

The format is `report.schema.json` beside this module (documented in README.md here).
Turn detection, latency and barge-in rules:
- caller turns: script utterances (one turn each, leading/trailing silence trimmed) or, for
  recordings and captures, energy-detected speech segments (see `ivr.harness.speech`); and
  keypad entries: DTMF keys pressed less than 2 s apart, with no bot speech starting between
  them, are one turn (`caller_keys`, from the first key to the last), answered like speech;
- a turn's bot response is the first voiced bot audio that *plays* after the caller's speech
  ends and before the caller's next turn; response latency = that play time - speech end;
- a barge-in is a caller turn that starts while the bot is talking: voiced bot audio playing,
  or a pause of under 500 ms inside its speech (between two voiced stretches, or after one
  while more bot audio is still playing); its latency runs
  from the caller's speech start to the first `clear` received; `frames_after_clear` counts
  bot audio (in 160-byte frames) received after that clear while the caller is still speaking:
  audio from the interrupted turn that leaked through, which must be zero. `audible_stop_ms` is
  when the caller heard the bot go quiet for good while they spoke (the end of the last voiced
  bot audio played during their speech: a `clear` cuts it, a bot that stops feeding lets its
  queue run out; None when none played), `audible_stop_latency_ms` that minus the speech
  start, and `quiet_ms` how long the bot
  then stayed quiet (until its next voiced audio, or the call's end): for a backchannel the
  bot carries on, and that is the pause the caller heard;
- `bot.repeated_ms`: voiced bot audio the caller heard twice within `REPEAT_WINDOW_MS` (a bot
  that says a cut sentence again from its start); a prompt said again later is not counted.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ivr.audio import FRAME_BYTES
from ivr.harness.playback import SAMPLES_PER_MS, BotMedia, TwilioPlayback, to_ms, voiced_blocks
from ivr.harness.record import CallError, CallRecord

FORMAT = "ivr.replay.report/1"
#: The playout queue running dry for less than this between two bot messages is an audible gap
#: inside an utterance (an underrun); longer silences are the bot pausing on purpose.
UNDERRUN_MAX_MS = 500.0
#: Keys pressed closer together than this are one entry (an order number and its #).
KEY_RUN_MS = 2000.0
#: A caller who starts in a pause shorter than this inside the bot's speech is barging in.
SPURT_BRIDGE_MS = 500.0
#: A voiced frame heard again within this long of its first play is a stutter, not a re-prompt.
REPEAT_WINDOW_MS = 5000.0
#: Bot audio arriving with less than this queued ahead of it is being paced in real time.
PACED_LEAD_MS = 60.0

#: (start_ms, end_ms) -> what the bot said in that stretch, if known (side channel, local STT).
BotText = Callable[[float, float], "str | None"]


def ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 1)


def percentiles(values: list[float] | np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(len(a)), "p50": ms(p50), "p95": ms(p95), "p99": ms(p99), "max": ms(a.max())}


def talk_spurts(voiced: list[tuple[float, float]], bridge_ms: float = SPURT_BRIDGE_MS) -> list[tuple[float, float]]:
    """Voiced stretches joined across the short pauses between words and sentences."""
    spurts: list[list[float]] = []
    for a, b in voiced:
        if spurts and a - spurts[-1][1] < bridge_ms:
            spurts[-1][1] = b
        else:
            spurts.append([a, b])
    return [(a, b) for a, b in spurts]


def playing_at(record: CallRecord, t_ms: float) -> bool:
    """Bot audio of any level (speech or the pauses inside it) is playing at `t_ms`."""
    t = t_ms * 8
    return any(m.play_start <= t < m.play_start + m.kept for m in record.playback.media)


def caller_turns(record: CallRecord) -> list[dict]:
    turns = []
    for utterance in record.utterances:
        spans = utterance.speech_spans_ms()
        text = utterance.text if len(spans) == 1 else None
        for start, end in spans:
            turns.append({"caller_text": text, "caller_keys": None, "caller_speech_start_ms": start, "caller_speech_end_ms": end})
    turns.sort(key=lambda t: t["caller_speech_start_ms"])
    return turns


def key_turns(dtmf: list[tuple[str, float]], voiced: list[tuple[float, float]],
              speech: list[dict]) -> list[dict]:
    """Keypad entries as turns: without them, the bot's answer to a key would be read as more of
    whatever it said before (the greeting, or its answer to the last spoken turn)."""
    breaks = sorted([a for a, _ in voiced] + [t["caller_speech_start_ms"] for t in speech])
    turns: list[dict] = []
    for digit, at in sorted(dtmf, key=lambda d: d[1]):
        if turns:
            last = turns[-1]["caller_speech_end_ms"]
            if at - last < KEY_RUN_MS and not any(last < b <= at for b in breaks):
                turns[-1]["caller_keys"] += digit
                turns[-1]["caller_speech_end_ms"] = at
                continue
        turns.append({"caller_text": None, "caller_keys": digit, "caller_speech_start_ms": at, "caller_speech_end_ms": at})
    return turns


def bot_voiced_ms(record: CallRecord) -> list[tuple[float, float]]:
    """The bot's voiced stretches as played, call-clock ms, those begun before the call ended."""
    end = record.end_ms
    return [(to_ms(a), to_ms(b)) for a, b in record.playback.voiced if to_ms(a) < end]


def all_turns(record: CallRecord, voiced: list[tuple[float, float]]) -> tuple[list[dict], list[dict]]:
    """(the spoken turns, every turn: spoken and keyed, in order of their start)."""
    spoken = caller_turns(record)
    turns = sorted(spoken + key_turns(record.dtmf, voiced, spoken), key=lambda t: t["caller_speech_start_ms"])
    return spoken, turns


def first_voice(voiced: list[tuple[float, float]], after_ms: float, before_ms: float) -> float | None:
    for start, _ in voiced:
        if after_ms <= start < before_ms:
            return start
    return None


@dataclass(slots=True)
class TurnTiming:
    """A caller turn's figures, unrounded call-clock ms: what the report and a load run count."""

    start_ms: float
    end_ms: float
    #: The caller's next turn, or the call's end: the bot's answer must come before it.
    next_start_ms: float
    bot_first_ms: float | None
    barge_in: bool

    @property
    def response_latency_ms(self) -> float | None:
        return None if self.bot_first_ms is None else self.bot_first_ms - self.end_ms


def turn_timings(record: CallRecord, voiced: list[tuple[float, float]], turns: list[dict]) -> list[TurnTiming]:
    spurts = talk_spurts(voiced)
    out = []
    for i, turn in enumerate(turns):
        start, stop = turn["caller_speech_start_ms"], turn["caller_speech_end_ms"]
        next_start = turns[i + 1]["caller_speech_start_ms"] if i + 1 < len(turns) else record.end_ms
        # Keys are heard by Twilio, not over the bot's voice: pressing one is not a barge-in.
        # The test on the voiced stretches goes before `playing_at`, which reads every media.
        barge = turn["caller_keys"] is None and (any(a <= start < b for a, b in spurts) or (
            any(0 <= start - b < SPURT_BRIDGE_MS for _, b in voiced) and playing_at(record, start)
        ))
        out.append(TurnTiming(start, stop, next_start, first_voice(voiced, stop, next_start), barge))
    return out


@dataclass(slots=True)
class BargeInClear:
    """How the bot answered a barge-in: its first `clear`, and the bot audio that still came
    after it while the caller spoke."""

    start_ms: float
    clear_ms: float | None
    bytes_after_clear: int

    @property
    def latency_ms(self) -> float | None:
        return None if self.clear_ms is None else self.clear_ms - self.start_ms

    @property
    def frames_after_clear(self) -> int:
        return math.ceil(self.bytes_after_clear / FRAME_BYTES)


def barge_in_clear(record: CallRecord, turn: TurnTiming) -> BargeInClear:
    start, stop = turn.start_ms, turn.end_ms
    clear = next((t for t in record.playback.clears if start <= t < turn.next_start_ms), None)
    leaked = 0
    if clear is not None:
        media = record.playback.media
        # The media arrived in order: start at the first after the clear, stop past `stop`.
        for i in range(bisect_right(media, clear, key=_recv_ms), len(media)):
            item = media[i]
            if item.recv_ms > stop:
                break
            leaked += len(item.payload)
    return BargeInClear(start, clear, leaked)


def _recv_ms(item: BotMedia) -> float:
    return item.recv_ms


def error_entry(error: CallError) -> dict:
    return {"ms": ms(error.ms), "kind": error.kind, "detail": error.detail}


def build_report(record: CallRecord, bot_text: BotText | None = None) -> dict:
    playback = record.playback
    end = record.end_ms
    voiced = bot_voiced_ms(record)
    spoken, turns = all_turns(record, voiced)

    def text_between(a: float | None, b: float) -> str | None:
        return bot_text(a, b) if bot_text is not None and a is not None else None

    first_caller = turns[0]["caller_speech_start_ms"] if turns else end
    greeting_ms = first_voice(voiced, 0.0, first_caller)
    report_turns, barge_ins = [], []
    for i, (turn, timing) in enumerate(zip(turns, turn_timings(record, voiced, turns))):
        report_turns.append(
            {
                "index": i,
                "caller_text": turn["caller_text"],
                "caller_keys": turn["caller_keys"],
                "caller_speech_start_ms": ms(timing.start_ms),
                "caller_speech_end_ms": ms(timing.end_ms),
                "bot_first_audio_ms": ms(timing.bot_first_ms),
                "response_latency_ms": ms(timing.response_latency_ms),
                "bot_text": text_between(timing.bot_first_ms, timing.next_start_ms),
                "barge_in": timing.barge_in,
            }
        )
        if timing.barge_in:
            barge_ins.append(_barge_in(record, i, timing, voiced))
    return {
        "format": FORMAT,
        "call": _call(record),
        "greeting": {"bot_first_audio_ms": ms(greeting_ms), "bot_text": text_between(greeting_ms, first_caller)},
        "turns": report_turns,
        "barge_ins": barge_ins,
        "marks": [
            {"name": m.name, "sent_ms": ms(m.sent_ms), "due_ms": ms(m.due_ms), "echoed_ms": ms(m.echoed_ms), "outcome": m.outcome}
            for m in playback.marks
        ],
        "clears": [ms(t) for t in playback.clears],
        "dtmf": [{"digit": d, "ms": ms(t)} for d, t in record.dtmf],
        "errors": [error_entry(e) for e in record.errors],
        "caller": {
            "frames_sent": len(record.caller) // FRAME_BYTES,
            "frame_lag_ms": percentiles(record.frame_lag_ms),
            "speech": [[ms(t["caller_speech_start_ms"]), ms(t["caller_speech_end_ms"])] for t in spoken],
        },
        "bot": _bot(record, voiced),
    }


def _call(record: CallRecord) -> dict:
    return {
        "name": record.name,
        "kind": record.kind,
        "source": record.source,
        "url": record.url,
        "speed": record.speed,
        "call_sid": record.call_sid,
        "stream_sid": record.stream_sid,
        "params": dict(record.params),
        "started_at": record.started_at,
        "duration_ms": ms(record.end_ms),
        "wall_seconds": round(record.wall_seconds, 3),
        "connected": record.connected,
        "ended_by": record.ended_by,
        "failed": record.failed,
    }


def audible_stop(voiced, start: float, stop: float) -> float | None:
    """When the bot's voice, as played, stopped for good while the caller spoke from `start` to
    `stop`: the end of the last voiced stretch heard during their speech (None: none was).

    Not the end of the stretch playing as they began: a bot still talking has gaps between its
    words, and one that began in a pause between sentences may start its next one over them."""
    heard = [b for a, b in voiced if b > start and a < max(stop, start + 1)]
    return max(heard) if heard else None


def _barge_in(record: CallRecord, turn: int, timing: TurnTiming, voiced) -> dict:
    start, stop, next_start = timing.start_ms, timing.end_ms, timing.next_start_ms
    clear = barge_in_clear(record, timing)
    # How long the caller heard the bot talk over them.
    overlap = sum(max(0.0, min(b, next_start) - max(a, start)) for a, b in voiced if a < stop)
    stop_at = audible_stop(voiced, start, stop)
    after = next((a for a, _ in voiced if stop_at is not None and a >= stop_at), record.end_ms)
    return {
        "turn": turn,
        "caller_speech_start_ms": ms(start),
        "clear_ms": ms(clear.clear_ms),
        "latency_ms": ms(clear.latency_ms),
        "bot_talked_over_ms": ms(overlap),
        "frames_after_clear": clear.frames_after_clear,
        "bytes_after_clear": clear.bytes_after_clear,
        "audible_stop_ms": ms(stop_at),
        "audible_stop_latency_ms": ms(None if stop_at is None else stop_at - start),
        "quiet_ms": ms(None if stop_at is None else after - stop_at),
    }


def repeated_ms(media: list[BotMedia]) -> float:
    """Voiced audio heard again soon after it was first heard (see REPEAT_WINDOW_MS)."""
    first_heard: dict[bytes, float] = {}
    repeated = 0.0
    for item in sorted(media, key=lambda m: m.play_start):
        if item.kept < FRAME_BYTES // 2:
            continue
        for a in voiced_blocks(item.payload):
            if item.kept - a < FRAME_BYTES // 2:
                break
            frame = item.payload[a : a + FRAME_BYTES]
            at = to_ms(item.play_start + a)
            seen = first_heard.get(frame)
            if seen is not None and at - seen <= REPEAT_WINDOW_MS:
                repeated += to_ms(min(FRAME_BYTES, item.kept - a))
            else:
                first_heard[frame] = at
    return repeated


@dataclass(slots=True)
class BotPacing:
    """How the bot's audio arrived against its playout."""

    #: Per media message: how long before its play time it arrived (0 when it played at once).
    lead_ms: list[float]
    jitter_ms: float
    underruns: int
    underrun_ms: float


def bot_pacing(playback: TwilioPlayback) -> BotPacing:
    media = playback.media
    clears = sorted(playback.clears)
    jitter, gaps, gap_ms = 0.0, 0, 0.0
    leads = []
    previous: BotMedia | None = None
    for item in media:
        recv = item.recv_ms
        lead = item.play_start / SAMPLES_PER_MS - recv
        leads.append(lead if lead > 0.0 else 0.0)
        if previous is not None:
            # A clear between the two (the first at or after the previous one's arrival) means the
            # queue was emptied on purpose: no underrun, and no arrival interval to measure.
            c = bisect_left(clears, previous.recv_ms)
            if c == len(clears) or clears[c] > recv:
                previous_ms = len(previous.payload) / SAMPLES_PER_MS
                dry = recv - (previous.play_start + len(previous.payload)) / SAMPLES_PER_MS
                if 0 < dry < UNDERRUN_MAX_MS:
                    gaps += 1
                    gap_ms += dry
                if lead < PACED_LEAD_MS and dry < UNDERRUN_MAX_MS:
                    # RFC 3550 interarrival jitter, media time = audio duration of the previous
                    # piece. Only for audio paced in real time: audio sent ahead sits in the
                    # queue, where arrival jitter cannot be heard (its margin is the lead instead).
                    d = (recv - previous.recv_ms) - previous_ms
                    jitter += (abs(d) - jitter) / 16
        previous = item
    return BotPacing(leads, jitter, gaps, gap_ms)


def _bot(record: CallRecord, voiced: list[tuple[float, float]]) -> dict:
    media = record.playback.media
    pacing = bot_pacing(record.playback)
    return {
        "media_messages": len(media),
        "bytes": sum(len(m.payload) for m in media),
        "played_ms": ms(sum(to_ms(m.kept) for m in media)),
        "dropped_ms": ms(sum(to_ms(len(m.payload) - m.kept) for m in media)),
        "jitter_ms": ms(pacing.jitter_ms),
        "lead_ms": percentiles(pacing.lead_ms),
        "underruns": pacing.underruns,
        "underrun_ms": ms(pacing.underrun_ms),
        "repeated_ms": ms(repeated_ms(media)),
        "speech": [[ms(a), ms(b)] for a, b in voiced],
        "media": [
            {"recv_ms": ms(m.recv_ms), "play_ms": ms(to_ms(m.play_start)), "bytes": len(m.payload), "played_bytes": m.kept}
            for m in media
        ],
    }
