"""The four provider interfaces: voice activity, speech-to-text, text-to-speech and the brain.

Everything the conversation engine needs from an engine is here, as `typing.Protocol`s and frozen
slotted dataclasses; each implementation lives in its own module (`local_vad`, `local_stt`,
`local_tts`, `flow`, and later the cloud adapters) and imports nothing from the others.

Conventions
-----------
- Times are integer milliseconds on the call's audio clock: the amount of caller audio fed to the
  session so far (8000 samples = 1000 ms). They do not depend on wall-clock time, so a replayed call
  gives the same numbers however fast it runs.
- Caller audio enters as 8 kHz mu-law bytes exactly as Twilio sends it, in pieces of any length.
  A cloud STT forwards them untouched; the local engine decodes them itself.
- Streams are async iterators with an explicit end: `SttSession` and `TtsStream` iterate until
  `aclose()`/`cancel()` (or, for TTS, until the last piece after `end()`), and their `cancel()` or
  `aclose()` returns only once no more events will be produced, so a barge-in can rely on silence
  afterwards.
- Engines (`SpeechToText`, `TextToSpeech`, `Brain`, `VoiceActivityEngine`) are created once per
  process and shared by every call. `load()` is idempotent: the server's start-up calls it so the
  first caller does not wait for model loading, and the first use calls it anyway.

Brain output
------------
`respond()` and `greeting()` yield `TextDelta`s (text to speak, in pieces as they are generated;
the reply is their plain concatenation, as an LLM streams it, so a piece carries its own spaces)
and `ToolCall`s. Built-in tools, which the conversation engine carries out itself:

- `transfer`: arguments `to` (an E.164 number or a `sip:` URI) and optional `summary`;
- `hangup`: no arguments (speak any goodbye first: it comes as text before the call);
- `send_dtmf`: argument `digits`.

Any other name is a custom tool for the application. A brain may answer with nothing (for example
while it collects DTMF digits one at a time); the engine then keeps listening. Cancelling the task
that iterates, or closing the iterator, abandons a response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, Union

# --- Call context ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallContext:
    """What is known about a call when its providers are opened.

    `parameters` are the stream's custom parameters (Twilio `<Parameter>` children, e.g. `From`,
    `To`); a flow can use them as `{From}` in its replies.
    """

    call_sid: str = ""
    stream_sid: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)


# --- Voice activity --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VadEvent:
    """Speech started or ended. `at_ms` is where it happened in the audio, not when it was decided:
    a start is reported after `min_speech_ms` of speech and an end after `min_silence_ms` of
    silence, each dated back to its first frame."""

    kind: Literal["speech_start", "speech_end"]
    at_ms: int


class VoiceActivity(Protocol):
    """One per call. Feeds 16-bit little-endian mono PCM at `sample_rate`, any length."""

    sample_rate: int

    def process(self, pcm16: bytes) -> list[VadEvent]: ...

    @property
    def probability(self) -> float:
        """Speech probability of the last window."""
        ...

    @property
    def speaking(self) -> bool:
        """Between a speech_start and its speech_end."""
        ...

    def reset(self) -> None: ...


class VoiceActivityEngine(Protocol):
    """Shared model; `create()` makes a per-call detector with its own state."""

    async def load(self) -> None: ...

    def create(self) -> VoiceActivity: ...


# --- Speech-to-text --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started speaking (dated to the onset): the engine's cue for barge-in."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class Interim:
    """Provisional text of the utterance in progress; a later Interim or Final replaces it."""

    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Final:
    """Settled text of one stretch of speech. Finals are not repeated: a turn is their sequence."""

    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    """The caller has finished; `text` is the whole turn (the Finals since the last EndOfTurn).

    `at_ms` is where the turn's speech ended; the decision is taken some silence later. `text`
    may be empty: something the VAD took for speech turned out to hold no words (a cough, a door),
    so a bot turn that a SpeechStarted interrupted may resume.
    """

    text: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class EagerEndOfTurn:
    """The turn is probably over (a turn-taking model's early guess, e.g. Deepgram Flux): a reply
    may be prepared now, to be spoken if the EndOfTurn that follows has the same text."""

    text: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class TurnResumed:
    """The caller went on after an EagerEndOfTurn: a reply prepared for it is dropped."""

    at_ms: int


SttEvent = Union[SpeechStarted, Interim, Final, EndOfTurn, EagerEndOfTurn, TurnResumed]


class SttSession(Protocol):
    """One per call. Iterate it for events; iteration ends after `aclose()`.

    A session may also offer `speaking: bool` (is the caller speaking now?); the engine uses it
    to hold a barge-in until the speech has lasted `barge_in.min_speech_ms`. Without it, speech
    that started is taken to go on.

    It may also offer `expect(phrases: Sequence[str]) -> None`: the words the caller is likely to
    say now (the brain's `expected()`, given again whenever the caller starts speaking), which a
    recogniser may bias its decoding toward. A session without it hears every turn alike.
    """

    async def send(self, ulaw: bytes) -> None:
        """Caller audio, 8 kHz mu-law, as it arrives."""
        ...

    async def finalize(self) -> None:
        """Treat the audio so far as complete: any utterance in progress is transcribed and ends
        the turn. Returns once those events are queued. The session stays usable."""
        ...

    async def aclose(self) -> None:
        """Stop at once; pending work is dropped and iteration ends."""
        ...

    def __aiter__(self) -> AsyncIterator[SttEvent]: ...


class SpeechToText(Protocol):
    async def load(self) -> None: ...

    async def open(self, call: CallContext | None = None) -> SttSession: ...


# --- Text-to-speech --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WordTiming:
    """A word's place in the audio of its chunk, in ms from the chunk's first sample."""

    word: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Audio for text piece number `piece` (0, 1, 2... in push order). A piece may come in several
    chunks; `last` marks its final one (possibly empty audio, e.g. for a piece of punctuation)."""

    piece: int
    audio: bytes
    sample_rate: int
    encoding: Literal["pcm16", "ulaw"]
    last: bool
    words: tuple[WordTiming, ...] = ()


class TtsStream(Protocol):
    """One per bot turn. Iteration ends after the last chunk of the last piece once `end()` has
    been called, or at once after `cancel()`."""

    async def push(self, text: str) -> int:
        """Queue a piece of text (a sentence or clause reads best); returns its piece index."""
        ...

    async def end(self) -> None:
        """No more text for this turn."""
        ...

    async def cancel(self) -> None:
        """Stop generating now and free the worker; no chunk is yielded after this returns."""
        ...

    def __aiter__(self) -> AsyncIterator[AudioChunk]: ...


class TextToSpeech(Protocol):
    sample_rate: int
    encoding: Literal["pcm16", "ulaw"]

    async def load(self) -> None: ...

    def stream(self) -> TtsStream: ...


# --- Brain -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of the conversation so far. A bot turn holds only what the caller heard;
    `interrupted` marks one the caller cut short."""

    role: Literal["caller", "bot"]
    text: str
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class CallerInput:
    """What the caller just did: spoke (`text`), pressed keys (`dtmf`, one or more of 0-9*#A-D),
    or neither (`text` and `dtmf` both None: silence, the engine's re-prompt cue)."""

    text: str | None = None
    dtmf: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: Mapping[str, object]
    id: str


BrainOutput = Union[TextDelta, ToolCall]

#: Tools the conversation engine carries out itself.
BUILTIN_TOOLS = ("transfer", "hangup", "send_dtmf")


class BrainSession(Protocol):
    """A session may set `speculative = True` when `respond()` changes nothing until its reply
    is used (its state lives in the history passed in): the engine may then start a reply on an
    EagerEndOfTurn and drop it if the caller goes on. A stateful brain (the call flow) leaves it
    unset.

    A session may also offer `expected() -> tuple[str, ...]`: the phrases the caller is likely to
    say at this point of the call (a flow node's routes, digits for a number), for the
    recogniser (`SttSession.expect`)."""

    def greeting(self) -> AsyncIterator[BrainOutput]:
        """The bot's opening turn."""
        ...

    def respond(self, history: Sequence[Turn], caller: CallerInput) -> AsyncIterator[BrainOutput]:
        """The bot's answer to `caller`, given `history` (which does not include `caller`)."""
        ...

    async def aclose(self) -> None: ...


class Brain(Protocol):
    async def load(self) -> None: ...

    async def open(self, call: CallContext) -> BrainSession: ...


__all__ = [
    "AudioChunk",
    "BUILTIN_TOOLS",
    "Brain",
    "BrainOutput",
    "BrainSession",
    "CallContext",
    "CallerInput",
    "EagerEndOfTurn",
    "EndOfTurn",
    "Final",
    "Interim",
    "SpeechStarted",
    "SpeechToText",
    "SttEvent",
    "SttSession",
    "TextDelta",
    "TextToSpeech",
    "ToolCall",
    "TurnResumed",
    "TtsStream",
    "Turn",
    "VadEvent",
    "VoiceActivity",
    "VoiceActivityEngine",
    "Word",
    "WordTiming",
]
