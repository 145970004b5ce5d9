"""DTMF digits as audio (a Media Stream carries no DTMF of ours, so we play the tones)."""

import numpy as np

from ivr.audio.g711 import pcm16_to_ulaw

_ROWS = {"1": 697, "2": 697, "3": 697, "A": 697, "4": 770, "5": 770, "6": 770, "B": 770,
         "7": 852, "8": 852, "9": 852, "C": 852, "*": 941, "0": 941, "#": 941, "D": 941}  # fmt: skip
_COLS = {"1": 1209, "4": 1209, "7": 1209, "*": 1209, "2": 1336, "5": 1336, "8": 1336, "0": 1336,
         "3": 1477, "6": 1477, "9": 1477, "#": 1477, "A": 1633, "B": 1633, "C": 1633, "D": 1633}  # fmt: skip


def dtmf_ulaw(digits: str, tone_ms: int = 100, gap_ms: int = 60, rate: int = 8000) -> bytes:
    """8 kHz mu-law for `digits` (0-9 * # A-D; `w` pauses half a second), each tone `tone_ms` long."""
    parts = []
    t = np.arange(rate * tone_ms // 1000) / rate
    gap = np.zeros(rate * gap_ms // 1000)
    for d in digits.upper():
        if d == "W":
            parts.append(np.zeros(rate // 2))
            continue
        if d not in _ROWS:
            raise ValueError(f"not a DTMF digit: {d!r}")
        parts.append(7000 * (np.sin(2 * np.pi * _ROWS[d] * t) + np.sin(2 * np.pi * _COLS[d] * t)))
        parts.append(gap)
    pcm = np.concatenate(parts).astype("<i2").tobytes() if parts else b""
    return pcm16_to_ulaw(pcm)
