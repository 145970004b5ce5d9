"""Energy-based speech detection on 8 kHz audio, for recordings whose turns nobody wrote down.

Method (deliberately simple and deterministic, so reports are reproducible):
- the audio is cut into 20 ms frames and each frame's RMS level is taken in dBFS;
- the threshold is the noise floor (10th percentile of frame levels) plus 15 dB, kept between
  -50 dBFS (so digital silence and line hiss stay below it) and -30 dBFS (so audio that is
  speech from end to end, whose "floor" is speech, is not all below it);
- frames above the threshold are speech; pauses shorter than `bridge_ms` (600 ms by default,
  longer than the pauses inside a sentence, shorter than a turn change) are bridged;
- segments shorter than `min_speech_ms` (120 ms: clicks, breaths) are dropped.
Call scripts know where each utterance is; there only leading and trailing silence is trimmed.
"""

from __future__ import annotations

import numpy as np

from ivr.audio import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, ulaw_to_pcm16

FLOOR_PERCENTILE = 10
ABOVE_FLOOR_DB = 15.0
MIN_THRESHOLD_DBFS = -50.0
MAX_THRESHOLD_DBFS = -30.0
SILENT_DBFS = -120.0


def frame_levels_db(pcm: np.ndarray, frame: int = FRAME_BYTES) -> np.ndarray:
    """RMS level in dBFS of each whole or partial `frame`-sample block of int16 samples."""
    n = len(pcm)
    if n == 0:
        return np.zeros(0)
    pad = (-n) % frame
    x = np.concatenate((pcm.astype(np.float64), np.zeros(pad))).reshape(-1, frame)
    counts = np.full(len(x), frame, dtype=np.float64)
    if pad:
        counts[-1] = frame - pad
    rms = np.sqrt((x * x).sum(axis=1) / counts)
    with np.errstate(divide="ignore"):
        db = 20 * np.log10(rms / 32768.0)
    return np.maximum(db, SILENT_DBFS)


def threshold_db(levels: np.ndarray) -> float:
    if len(levels) == 0:
        return MIN_THRESHOLD_DBFS
    floor = float(np.percentile(levels, FLOOR_PERCENTILE))
    return min(max(floor + ABOVE_FLOOR_DB, MIN_THRESHOLD_DBFS), MAX_THRESHOLD_DBFS)


def ulaw_pcm(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2")


def speech_segments(
    pcm: np.ndarray,
    bridge_ms: int = 600,
    min_speech_ms: int = 120,
    threshold: float | None = None,
) -> list[tuple[int, int]]:
    """Speech segments as (start, end) sample offsets at 8 kHz, end exclusive."""
    levels = frame_levels_db(pcm)
    thr = threshold_db(levels) if threshold is None else threshold
    voiced = np.flatnonzero(levels > thr)
    if len(voiced) == 0:
        return []
    bridge = bridge_ms // FRAME_MS
    segments: list[list[int]] = [[int(voiced[0]), int(voiced[0]) + 1]]
    for f in voiced[1:]:
        f = int(f)
        if f - segments[-1][1] <= bridge:
            segments[-1][1] = f + 1
        else:
            segments.append([f, f + 1])
    min_frames = -(-min_speech_ms // FRAME_MS)
    n = len(pcm)
    return [
        (a * FRAME_BYTES, min(b * FRAME_BYTES, n)) for a, b in segments if b - a >= min_frames
    ]


def trimmed_span(pcm: np.ndarray) -> tuple[int, int] | None:
    """First and last speech sample (end exclusive) of one utterance, or None if it is silent."""
    segments = speech_segments(pcm, bridge_ms=10**9, min_speech_ms=FRAME_MS)
    return segments[0] if segments else None


def samples_to_ms(samples: int) -> float:
    return samples * 1000.0 / SAMPLE_RATE
