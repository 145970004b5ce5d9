"""Silero VAD v6 on onnxruntime: one inference session per process, one small state per call.

The model file is the one faster-whisper ships (`assets/silero_vad_v6.onnx`), which spares the
`silero-vad` package and its torch dependency. That export takes 16 kHz only: its input is fixed at
512 new samples plus 64 of context (576), so there is no 8 kHz mode to choose. Caller audio is
therefore upsampled 8 -> 16 kHz by a short FIR (`_Upsample2x`), whose 1.5 ms delay is subtracted
from the reported times.

Events use hysteresis, as Silero's own iterator does: speech starts when the probability reaches
`threshold` for `min_speech_ms`, and ends only after it stays below the lower `neg_threshold` for
`min_silence_ms`. On phone-band audio clearly spoken words can score only 0.5-0.65, so a single
threshold would flicker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ivr.providers.base import VadEvent
from ivr.providers.workers import shared_model

MODEL_RATE = 16000
WINDOW = 512  # new samples per inference at 16 kHz: 32 ms
CONTEXT = 64  # samples of the previous window the model sees again
WINDOW_MS = WINDOW * 1000 // MODEL_RATE


def default_model_path() -> str:
    import faster_whisper

    return os.path.join(os.path.dirname(faster_whisper.__file__), "assets", "silero_vad_v6.onnx")


@dataclass(frozen=True, slots=True)
class VadOptions:
    threshold: float = 0.5
    neg_threshold: float = 0.3
    min_speech_ms: int = 64
    min_silence_ms: int = 160

    def __post_init__(self) -> None:
        if not 0 < self.neg_threshold <= self.threshold < 1:
            raise ValueError("VAD thresholds need 0 < neg_threshold <= threshold < 1")
        if self.min_speech_ms < 0 or self.min_silence_ms < 0:
            raise ValueError("VAD minimum durations cannot be negative")


def _load_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread per inference: windows are tiny, and many calls run them side by side.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class SileroVadEngine:
    """The shared model. `create()` gives each call its own `SileroVad`."""

    def __init__(self, model_path: str | None = None, options: VadOptions | None = None) -> None:
        self.model_path = model_path or default_model_path()
        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"Silero VAD model not found: {self.model_path}")
        self.options = options or VadOptions()
        path = self.model_path
        self._session = shared_model(("silero", path), f"Silero VAD ({Path(path).name})", lambda: _load_session(path))

    async def load(self) -> None:
        await self._session.aget()

    def create(self, sample_rate: int = 8000, **overrides: float | int) -> "SileroVad":
        options = replace(self.options, **overrides) if overrides else self.options
        return SileroVad(self._session.get(), sample_rate, options)


class _Upsample2x:
    """8 -> 16 kHz for the detector: a short half-band FIR in two phases, with its history.

    `ivr.audio.Resampler` is built for what a caller hears (flat to 3.4 kHz, 60 dB stopband); the
    detector was tuned on this filter's wider band (to 3.8 kHz), and with the other one its
    speech boundaries move enough to change what the recogniser is given (a recorded "four seven
    two nine" came out with a fifth digit), so it keeps its own. Its delay is `DELAY_MS`.
    """

    TAPS = 24  # per phase
    DELAY_MS = TAPS / 2 / 8  # ms at 8 kHz

    def __init__(self) -> None:
        from scipy.signal import firwin

        h = firwin(2 * self.TAPS, 3800, fs=16000) * 2
        self._even, self._odd = h[0::2].astype(np.float32), h[1::2].astype(np.float32)
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(self.TAPS - 1, dtype=np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        buf = np.concatenate((self._history, x))
        self._history = buf[len(buf) - (self.TAPS - 1) :]
        out = np.empty(2 * len(x), dtype=np.float32)
        out[0::2] = np.convolve(buf, self._even, mode="valid")
        out[1::2] = np.convolve(buf, self._odd, mode="valid")
        return out


class SileroVad:
    """Per-call detector: feed 16-bit PCM at `sample_rate` (8 or 16 kHz), get start/end events."""

    def __init__(self, session, sample_rate: int, options: VadOptions) -> None:
        if sample_rate not in (8000, MODEL_RATE):
            raise ValueError("the VAD takes 8000 or 16000 Hz audio")
        self.sample_rate = sample_rate
        self.options = options
        self._session = session
        self._resampler = _Upsample2x() if sample_rate != MODEL_RATE else None
        self._delay_ms = _Upsample2x.DELAY_MS if self._resampler else 0.0
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._input = np.zeros((1, CONTEXT + WINDOW), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows = 0
        self._probability = 0.0
        self._speaking = False
        self._run_start: int | None = None  # ms where the current run of speech (or silence) began
        if self._resampler:
            self._resampler.reset()

    @property
    def probability(self) -> float:
        return self._probability

    @property
    def speaking(self) -> bool:
        return self._speaking

    def process(self, pcm16: bytes) -> list[VadEvent]:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) * (1.0 / 32768.0)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        buf = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        events: list[VadEvent] = []
        start = 0
        while len(buf) - start >= WINDOW:
            event = self._window(buf[start : start + WINDOW])
            if event is not None:
                events.append(event)
            start += WINDOW
        self._pending = buf[start:].copy() if start < len(buf) else np.zeros(0, dtype=np.float32)
        return events

    def _window(self, window: np.ndarray) -> VadEvent | None:
        x = self._input
        x[0, :CONTEXT] = x[0, WINDOW:]  # the last 64 samples of the previous window
        x[0, CONTEXT:] = window
        prob, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        p = float(prob[0])
        self._probability = p
        at = max(0, round(self._windows * WINDOW_MS - self._delay_ms))
        self._windows += 1
        now = self._windows * WINDOW_MS
        o = self.options
        if not self._speaking:
            if p >= o.threshold:
                if self._run_start is None:
                    self._run_start = at
            elif p < o.neg_threshold:
                self._run_start = None
            if self._run_start is not None and now - self._delay_ms - self._run_start >= o.min_speech_ms:
                self._speaking = True
                onset, self._run_start = self._run_start, None
                return VadEvent("speech_start", onset)
        else:
            if p >= o.threshold:
                self._run_start = None
            elif p < o.neg_threshold and self._run_start is None:
                self._run_start = at
            if self._run_start is not None and now - self._delay_ms - self._run_start >= o.min_silence_ms:
                self._speaking = False
                end, self._run_start = self._run_start, None
                return VadEvent("speech_end", end)
        return None
