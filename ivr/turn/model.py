"""Smart Turn v3: does this audio sound like the end of the caller's turn?

The model (BSD-2-Clause, an ~8.7 MB int8 ONNX export of a small Whisper-encoder classifier) is
the one the `pipecat-ai` wheel carries (`pipecat/audio/turn/smart_turn/data/`). Only the file is
used: it is found without importing pipecat (whose import pulls in loguru, numba and more), and
run here on onnxruntime, which the embedded engines already have.

Its input contract: 16 kHz mono, the last 8 s of the turn (zeros in front of a shorter one), the
waveform normalised to zero mean and unit variance, then Whisper's 80-bin log-mel features
(`input_features`, shape (1, 80, 800)); its output is the probability that the turn is
complete. The features come from faster-whisper's numpy extractor (the same computation as
transformers' WhisperFeatureExtractor, which the model was trained with; a test checks the
match), so there is no second copy of that code here.

Caller audio is 8 kHz: it is upsampled, and the model then sees nothing above 4 kHz. Measured
on phone-band clips before trusting it (see `ivr bench turn`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivr.audio import resample, ulaw_to_pcm16
from ivr.providers.workers import WorkerPool, shared_model

log = logging.getLogger("ivr.turn")

MODEL_RATE = 16000
WINDOW_S = 8
BUNDLED = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")


def bundled_model_path() -> str | None:
    """The Smart Turn v3 file inside the installed pipecat-ai package, or None.

    `find_spec` of a top-level package locates it without running its `__init__`.
    """
    try:
        spec = importlib.util.find_spec("pipecat")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or ()) if spec else ():
        path = os.path.join(root, *BUNDLED)
        if os.path.isfile(path):
            return path
    return None


class TurnModelBusy(RuntimeError):
    """Every worker is taken and the queue is full: the turn is left to the plain timer."""


@dataclass(frozen=True, slots=True)
class TurnVerdict:
    """The model's answer for one candidate end of turn."""

    probability: float  # that the turn is complete
    compute_ms: float  # features + inference, on the worker thread (wall clock)
    cpu_ms: float = 0.0  # the CPU time that took


def _load_session(path: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread per decision: decisions are rare (only at pauses) and many calls share the cores.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _load_features():
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=MODEL_RATE, chunk_length=WINDOW_S)


class SmartTurn:
    """The shared model: one ONNX session and a small worker pool for every call.

    The pool is small and its queue short on purpose: a verdict is worth having only within
    a few hundred ms of the pause, and every call shares these cores with the calls' audio. A
    decision that would have to queue behind `workers + max_waiting` others is refused at once
    (`TurnModelBusy`) rather than queued: under load, turns fall back to the plain timer instead
    of waiting longer and longer for the model (the backlog once made answers seconds late).
    """

    def __init__(self, model_path: str | None = None, workers: int = 1, max_waiting: int = 1) -> None:
        path = model_path or bundled_model_path()
        if path is None:
            raise FileNotFoundError(
                "Smart Turn v3 model not found: install the turn extra (pip install 'ivr[turn]', "
                "which brings pipecat-ai) or set IVR_TURN_MODEL to an .onnx file, or to off"
            )
        if not Path(path).is_file():
            raise FileNotFoundError(f"Smart Turn model not found: {path}")
        self.model_path = path
        self.pool = WorkerPool(workers, "turn")
        self.max_waiting = max_waiting
        self._session = shared_model(("smart-turn", path), f"Smart Turn ({Path(path).name})", lambda: _load_session(path))
        self._features = shared_model(("whisper-features", WINDOW_S), "Whisper features (8 s)", _load_features)

    async def load(self) -> None:
        await self._session.aget()
        await self._features.aget()

    def probability_pcm16k(self, audio: np.ndarray) -> float:
        """Blocking: float32 audio at 16 kHz (the turn, ending now) -> P(turn complete)."""
        n = WINDOW_S * MODEL_RATE
        x = np.zeros(n, dtype=np.float32)
        tail = audio[-n:]
        x[n - len(tail) :] = tail
        # Normalised over the whole 8 s window, zeros included, as the model was trained.
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        features = self._features.get()(x, padding=0)[:, : n // 160]
        (out,) = self._session.get().run(None, {"input_features": features[None].astype(np.float32)})
        return float(np.asarray(out).reshape(-1)[0])

    def judge_ulaw(self, ulaw: bytes) -> TurnVerdict:
        """Blocking: 8 kHz mu-law as the line carried it -> the model's verdict."""
        start, cpu = time.perf_counter(), time.thread_time()
        pcm16 = resample(ulaw_to_pcm16(ulaw), 8000, MODEL_RATE)
        audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) * (1.0 / 32768.0)
        p = self.probability_pcm16k(audio)
        return TurnVerdict(p, (time.perf_counter() - start) * 1000, (time.thread_time() - cpu) * 1000)

    async def judge(self, ulaw: bytes) -> TurnVerdict:
        if self.pool.jobs >= self.pool.workers + self.max_waiting:
            raise TurnModelBusy(f"{self.pool.jobs} turn decisions already running or queued")
        return await self.pool.run(self.judge_ulaw, ulaw)
