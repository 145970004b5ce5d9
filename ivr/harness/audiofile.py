"""Read a caller recording into 8 kHz mu-law: WAV or FLAC at any rate, mono or stereo, or raw mu-law."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import numpy as np

from ivr.audio import SAMPLE_RATE, SUPPORTED_RATES, pcm16_to_ulaw, resample

#: Raw 8 kHz mu-law without a header, as Twilio carries it.
RAW_ULAW_SUFFIXES = (".ulaw", ".mulaw", ".raw", ".ul")
CHANNEL_NAMES = {"left": 0, "right": 1}


def channel_index(channel: str | int) -> int:
    if isinstance(channel, int):
        return channel
    if channel.isdigit():
        return int(channel)
    try:
        return CHANNEL_NAMES[channel.lower()]
    except KeyError:
        raise ValueError(f"channel {channel!r}: use left, right or a channel number") from None


def read_pcm(path: Path, channel: str | int = "left") -> tuple[np.ndarray, int]:
    """One channel of a WAV/FLAC file as int16 samples, and its rate."""
    index = channel_index(channel)
    try:
        import soundfile
    except ImportError:  # the standard library still reads PCM WAV
        soundfile = None
    if soundfile is not None:
        data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    else:
        if path.suffix.lower() != ".wav":
            raise ValueError(f"{path}: reading {path.suffix} needs the soundfile package")
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV without soundfile")
            rate = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
    if index >= data.shape[1]:
        raise ValueError(f"{path}: no channel {channel} (the file has {data.shape[1]})")
    return np.ascontiguousarray(data[:, index]), int(rate)


def to_phone_pcm(pcm: np.ndarray, rate: int) -> np.ndarray:
    """int16 samples at any rate -> int16 at 8 kHz."""
    if rate == SAMPLE_RATE:
        return pcm.astype(np.int16, copy=False)
    if rate in SUPPORTED_RATES:
        out = resample(pcm.astype("<i2").tobytes(), rate, SAMPLE_RATE)
        return np.frombuffer(out, dtype="<i2")
    # Unusual rates (11025, 32000, ...): a whole-buffer polyphase filter is fine for files.
    from scipy.signal import resample_poly

    ratio = Fraction(SAMPLE_RATE, rate)
    y = resample_poly(pcm.astype(np.float64), ratio.numerator, ratio.denominator)
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def pcm_to_ulaw(pcm: np.ndarray, rate: int) -> bytes:
    return pcm16_to_ulaw(to_phone_pcm(pcm, rate).astype("<i2").tobytes())


def read_ulaw(path: str | Path, channel: str | int = "left") -> bytes:
    """A recording as 8 kHz mu-law bytes, the caller's channel chosen."""
    path = Path(path)
    if path.suffix.lower() in RAW_ULAW_SUFFIXES:
        return path.read_bytes()
    pcm, rate = read_pcm(path, channel)
    return pcm_to_ulaw(pcm, rate)
