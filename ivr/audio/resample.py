"""Streaming sample-rate conversion with an anti-aliasing filter and no hidden buffering.

Why not soxr's ResampleStream: fed 20 ms pieces it emits nothing for several calls and then
~100 ms at once (its internal block size), which would add up to 100 ms to every barge-in and
every first bot word; its non-buffering "QQ" recipe does no anti-alias filtering at all.
scipy's resample_poly and upfirdn filter well but keep no state between chunks (and compute
the edges of every chunk as if silence surrounded it). So this module keeps a small polyphase
FIR of its own: the filter is designed by scipy, each call returns every output sample whose
input has arrived, and the only delay is the filter's group delay (2-3 ms).

The per-chunk work is a handful of numpy calls whose inner loops are compiled: the int16
samples are cast into a float32 buffer behind the filter's history, and the output is one
matrix product of a strided view of that buffer (the windows, not copied) with the polyphase
taps.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from math import gcd
from typing import NamedTuple

import numpy as np

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)

#: Passband edge and stopband edge as fractions of the lower Nyquist frequency. For 8 kHz
#: output: flat to 3.4 kHz (the telephone band), at least 60 dB down from 4 kHz on, so nothing
#: above the output's Nyquist folds back into the band a caller hears.
PASS_EDGE = 0.85
STOP_EDGE = 1.0
STOPBAND_DB = 60.0
#: Peak-to-peak ripple allowed in the passband. An equiripple filter trades it for length; a
#: telephone line itself varies by several dB across its band.
PASSBAND_RIPPLE_DB = 0.2

#: Prototypes longer than this are Kaiser-windowed instead of equiripple: the 22.05/44.1 kHz
#: ratios interpolate by 80-320 first, which makes prototypes of thousands of taps, beyond what
#: the Parks-McClellan exchange converges on (and their cost per frame is set by other things).
_REMEZ_MAX_TAPS = 1200
#: More phases than this: one BLAS product over a contiguous copy of the windows beats numpy's
#: dot product per row and phase over the buffer itself.
_MAX_PHASES_IN_PLACE = 8
_INT16_MIN, _INT16_MAX = np.float32(-32768), np.float32(32767)
#: Room for input behind the history: a second at 8 kHz, 170 ms at 48 kHz.
_BUFFER_SAMPLES = 8192


def _response_ok(h: np.ndarray, proto_rate: float, pass_hz: float, stop_hz: float) -> bool:
    from scipy.signal import freqz

    w, resp = freqz(h, worN=8192, fs=proto_rate)
    db = 20 * np.log10(np.abs(resp) + 1e-12)
    passband = db[w <= pass_hz]
    return float(np.ptp(passband)) <= PASSBAND_RIPPLE_DB and float(db[w >= stop_hz].max()) <= -STOPBAND_DB


def _prototype(proto_rate: float, pass_hz: float, stop_hz: float, grid: int) -> np.ndarray:
    """The shortest lowpass of length 1 (mod grid) meeting the band edges, ripple and stopband.

    Parks-McClellan (equiripple) meets the same stopband as a Kaiser window with about a
    quarter fewer taps, i.e. a quarter less work per sample.
    """
    # Imported here, once per rate pair: scipy.signal adds ~80 MB and a second of start-up to
    # every process that imports ivr.audio, and a server whose audio is all 8 kHz mu-law (the
    # cloud path) never designs a filter.
    from scipy.signal import firwin, kaiserord, remez

    width = (stop_hz - pass_hz) / (proto_rate / 2)
    kaiser_taps, beta = kaiserord(STOPBAND_DB, width)
    cutoff = (pass_hz + stop_hz) / 2
    if kaiser_taps <= _REMEZ_MAX_TAPS:
        n = grid * max(1, int(kaiser_taps * 0.6) // grid) + 1
        while n <= 2 * kaiser_taps:
            with warnings.catch_warnings():
                # A length too short for the bands does not converge: the check below rejects it.
                warnings.simplefilter("ignore")
                h = remez(n, [0, pass_hz, stop_hz, proto_rate / 2], [1, 0],
                          weight=[1, 10], fs=proto_rate)
            if _response_ok(h, proto_rate, pass_hz, stop_hz):
                return h
            n += grid
    # kaiserord's length formula is empirical and lands a few tenths of a dB short: ask for 1 dB more.
    kaiser_taps, beta = kaiserord(STOPBAND_DB + 1, width)
    n = grid * -(-kaiser_taps // grid) + 1
    return firwin(n, cutoff, window=("kaiser", beta), fs=proto_rate)


class _Design(NamedTuple):
    up: int
    down: int
    taps_per_phase: int
    #: (down + K - 1, up): one period's window of input (with K - 1 samples of history) times
    #: W is that period's `up` output samples.
    w: np.ndarray
    #: Delay in output samples.
    delay: int
    #: The prototype lowpass at in_rate * up, zero-padded to K * up taps.
    h: np.ndarray


@lru_cache(maxsize=None)
def _design(in_rate: int, out_rate: int) -> _Design:
    """The polyphase filter for in_rate -> out_rate.

    The conversion repeats every `down` input samples, which give `up` output samples, so a
    chunk's output is its windows (one per period, `down` samples apart) times W.
    """
    g = gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    nyq = min(in_rate, out_rate) / 2
    proto_rate = in_rate * up
    # An odd length whose centre lies a whole number of output samples in keeps the delay
    # integral, so whole-buffer resampling can remove it exactly.
    h = _prototype(proto_rate, PASS_EDGE * nyq, STOP_EDGE * nyq, 2 * down) * up
    numtaps = len(h)
    taps_per_phase = -(-numtaps // up)
    h = np.concatenate((h, np.zeros(taps_per_phase * up - numtaps)))
    # Output n sits at prototype time n*down; it uses input samples base(n) - k, k = 0..K-1,
    # with taps h[phase(n) + k*up]. Both repeat every `up` outputs, i.e. every `down` inputs.
    n = np.arange(up)
    base = (n * down) // up
    phase = (n * down) % up
    w = np.zeros((down + taps_per_phase - 1, up), dtype=np.float32)
    for i in range(up):
        w[base[i] : base[i] + taps_per_phase, i] = h[phase[i] :: up][:taps_per_phase][::-1]
    return _Design(up, down, taps_per_phase, w, (numtaps - 1) // 2 // down, h)


def prepare(in_rate: int, out_rate: int) -> None:
    """Design the conversion's filter now (e.g. in a worker thread at start-up): the first
    Resampler for a pair otherwise designs it, importing scipy.signal, on the caller's thread."""
    if in_rate != out_rate:
        _design(in_rate, out_rate)


def group_delay_ms(in_rate: int, out_rate: int) -> float:
    """Delay the filter adds, in milliseconds of audio."""
    if in_rate == out_rate:
        return 0.0
    return _design(in_rate, out_rate).delay / out_rate * 1000


def filter_taps(in_rate: int, out_rate: int) -> tuple[int, int, np.ndarray]:
    """(up, down, prototype taps) of the conversion, as scipy.signal.upfirdn takes them.

    `upfirdn(h, x, up, down)` is the same conversion done on a whole buffer, delayed by
    `group_delay_ms` (the tests check the stream against it).
    """
    d = _design(in_rate, out_rate)
    return d.up, d.down, d.h


class Resampler:
    """Converts a stream of 16-bit mono PCM chunks from one rate to another.

    `process()` takes any number of samples and returns every output sample that the input so
    far determines; nothing is held back beyond the filter's own history.
    """

    __slots__ = ("in_rate", "out_rate", "_passthrough", "_down", "_k", "_span", "_w", "_copy",
                 "_buf", "_start", "_end")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for rate in (in_rate, out_rate):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"unsupported sample rate {rate} Hz (supported: {SUPPORTED_RATES})")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        if not self._passthrough:
            d = _design(in_rate, out_rate)
            self._down, self._k, self._w = d.down, d.taps_per_phase, d.w
            self._span = d.down + d.taps_per_phase - 1
            # Many phases (the 22.05 kHz ratios): a period is long and a chunk holds one or two,
            # so one BLAS product over a copy of those few windows is cheapest.
            self._copy = d.up > _MAX_PHASES_IN_PLACE
            # Input accumulates behind the history and the history moves back to the front only
            # when the buffer is full: a few moves a second rather than one a chunk.
            self._buf = np.zeros(self._k - 1 + _BUFFER_SAMPLES, dtype=np.float32)
            self.reset()

    def process(self, pcm: bytes) -> bytes:
        """Resample a chunk of 16-bit little-endian PCM; returns 16-bit PCM at the output rate."""
        if self._passthrough:
            return pcm
        if len(pcm) % 2:
            raise ValueError("PCM16 chunk has an odd number of bytes")
        start, end = self._start, self._end
        n = len(pcm) // 2
        buf = self._buf
        if end + n > len(buf):
            kept = end - start
            if kept + n > len(buf):
                grown = np.zeros(kept + n + _BUFFER_SAMPLES, dtype=np.float32)
                grown[:kept] = buf[start:end]
                buf = self._buf = grown
            else:
                buf[:kept] = buf[start:end]
            start, end = 0, kept
        # The cast to float32 happens in the copy behind the history: one pass, no temporary.
        buf[end : end + n] = np.frombuffer(pcm, dtype="<i2")
        end += n
        down = self._down
        periods = (end - start - self._k + 1) // down
        self._end = end
        if periods <= 0:
            self._start = start
            return b""
        self._start = start + periods * down
        # The windows, one per period, as a strided view of the buffer: rows overlap, nothing
        # is copied, and np.dot runs a compiled dot product per row and phase.
        windows = np.ndarray((periods, self._span), np.float32, buf, start * 4, (down * 4, 4))
        y = np.dot(np.ascontiguousarray(windows) if self._copy else windows, self._w)
        y.clip(_INT16_MIN, _INT16_MAX, out=y)
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
            # K-1 zeros of history stand for the silence before the stream starts; they keep
            # output n aligned with input time n * in/out (plus the group delay).
            self._buf[: self._k - 1] = 0
            self._start, self._end = 0, self._k - 1


def resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole buffer (files, cached prompts); the output is time-aligned with the input."""
    if in_rate == out_rate:
        return pcm
    r = Resampler(in_rate, out_rate)
    delay_out = _design(in_rate, out_rate).delay
    out = r.process(pcm) + r.flush()
    # Drop the group delay so the result lines up with the input sample for sample.
    n_out = (len(pcm) // 2) * out_rate // in_rate
    return out[2 * delay_out : 2 * (delay_out + n_out)]
