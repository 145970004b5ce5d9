"""Streaming sample-rate conversion with an anti-aliasing filter and no hidden buffering.

Why not soxr's ResampleStream: fed 20 ms pieces it emits nothing for several calls and then
~100 ms at once (its internal block size), which would add up to 100 ms to every barge-in and
every first bot word; its non-buffering "QQ" recipe does no anti-alias filtering at all.
scipy's resample_poly filters well but keeps no state between chunks. So this module keeps a
small polyphase FIR of its own: the filter is designed by scipy (Kaiser window), each call
returns every output sample whose input has arrived, and the only delay is the filter's group
delay (a few milliseconds).
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import firwin, kaiserord

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)

#: Passband edge and stopband edge as fractions of the lower Nyquist frequency. For 8 kHz
#: output: flat to 3.4 kHz (the telephone band), at least 60 dB down from 4 kHz on, so nothing
#: above the output's Nyquist folds back into the band a caller hears.
PASS_EDGE = 0.85
STOP_EDGE = 1.0
STOPBAND_DB = 60.0


@lru_cache(maxsize=None)
def _design(in_rate: int, out_rate: int) -> tuple[int, int, int, np.ndarray, int]:
    """Filter for in_rate -> out_rate as (up, down, K, W, delay in output samples).

    The conversion repeats every `down` input samples, which give `up` output samples. W has
    shape (down + K - 1, up): one period's window of input (with K - 1 samples of history)
    times W is that period's output, so a whole chunk is one matrix product.
    """
    g = gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    nyq = min(in_rate, out_rate) / 2
    proto_rate = in_rate * up
    width = (STOP_EDGE - PASS_EDGE) * nyq / (proto_rate / 2)
    numtaps, beta = kaiserord(STOPBAND_DB, width)
    # An odd length whose centre lies a whole number of output samples in keeps the delay
    # integral, so whole-buffer resampling can remove it exactly.
    numtaps = 2 * down * -(-numtaps // (2 * down)) + 1
    taps_per_phase = -(-numtaps // up)
    cutoff = (PASS_EDGE + STOP_EDGE) / 2 * nyq
    h = firwin(numtaps, cutoff, window=("kaiser", beta), fs=proto_rate) * up
    h = np.concatenate((h, np.zeros(taps_per_phase * up - numtaps)))
    # Output n sits at prototype time n*down; it uses input samples base(n) - k, k = 0..K-1,
    # with taps h[phase(n) + k*up]. Both repeat every `up` outputs, i.e. every `down` inputs.
    n = np.arange(up)
    base = (n * down) // up
    phase = (n * down) % up
    span = down + taps_per_phase - 1
    w = np.zeros((span, up), dtype=np.float32)
    for i in range(up):
        taps = h[phase[i] :: up][:taps_per_phase][::-1]
        w[base[i] : base[i] + taps_per_phase, i] = taps
    return up, down, taps_per_phase, w, (numtaps - 1) // 2 // down


def group_delay_ms(in_rate: int, out_rate: int) -> float:
    """Delay the filter adds, in milliseconds of audio."""
    return _design(in_rate, out_rate)[4] / out_rate * 1000


class Resampler:
    """Converts a stream of 16-bit mono PCM chunks from one rate to another.

    `process()` takes any number of samples and returns every output sample that the input so
    far determines; nothing is held back beyond the filter's own history.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for rate in (in_rate, out_rate):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"unsupported sample rate {rate} Hz (supported: {SUPPORTED_RATES})")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        if not self._passthrough:
            self._up, self._down, self._k, self._w, _ = _design(in_rate, out_rate)
            # History of K-1 zeros stands for the silence before the stream starts; the start
            # offset keeps output n aligned with input time n * in/out (plus the group delay).
            self._buf = np.zeros(self._k - 1, dtype=np.float32)

    def process(self, pcm: bytes) -> bytes:
        """Resample a chunk of 16-bit little-endian PCM; returns 16-bit PCM at the output rate."""
        if self._passthrough:
            return pcm
        if len(pcm) % 2:
            raise ValueError("PCM16 chunk has an odd number of bytes")
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        buf = np.concatenate((self._buf, x)) if len(self._buf) else x
        down = self._down
        periods = (len(buf) - (self._k - 1)) // down
        if periods <= 0:
            self._buf = buf
            return b""
        span = down + self._k - 1
        # A contiguous copy of the strided windows lets the product run in BLAS.
        windows = np.ascontiguousarray(sliding_window_view(buf, span)[::down][:periods])
        y = (windows @ self._w).ravel()
        self._buf = buf[periods * down :]
        np.clip(y, -32768, 32767, out=y)
        return np.rint(y).astype("<i2").tobytes()

    def flush(self) -> bytes:
        """Push out the tail held in the filter history (call once at the end of a stream)."""
        if self._passthrough:
            return b""
        pad = self._k + self._down
        tail = self.process(b"\x00\x00" * pad)
        self.reset()
        return tail

    def reset(self) -> None:
        if not self._passthrough:
            self._buf = np.zeros(self._k - 1, dtype=np.float32)


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole buffer (files, cached prompts); the output is time-aligned with the input."""
    if in_rate == out_rate:
        return pcm
    r = Resampler(in_rate, out_rate)
    delay_out = _design(in_rate, out_rate)[4]
    out = r.process(pcm) + r.flush()
    # Drop the group delay so the result lines up with the input sample for sample.
    n_out = (len(pcm) // 2) * out_rate // in_rate
    return out[2 * delay_out : 2 * (delay_out + n_out)]
