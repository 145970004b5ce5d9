"""The call as heard, as a stereo 8 kHz 16-bit WAV: caller left, bot right."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ivr.audio import SAMPLE_RATE
from ivr.harness.record import CallRecord
from ivr.harness.speech import ulaw_pcm


def heard_channels(record: CallRecord) -> tuple[np.ndarray, np.ndarray]:
    """(caller, bot) int16 tracks of equal length: the caller as sent, the bot as played
    (each piece at its play time, cut where a clear cut it, nothing after the hang-up)."""
    caller = ulaw_pcm(bytes(record.caller))
    bot = record.playback.heard_pcm(len(caller))
    return caller, bot


def write_call_wav(record: CallRecord, path: str | Path | BinaryIO) -> str | Path | BinaryIO:
    """Write to a path or a binary file object; returns where it wrote."""
    target = str(path) if isinstance(path, (str, Path)) else path
    caller, bot = heard_channels(record)
    stereo = np.empty(2 * len(caller), dtype="<i2")
    stereo[0::2] = caller
    stereo[1::2] = bot
    with wave.open(target, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(stereo.tobytes())
    return path
