"""The turn gate: a speech-to-text session whose end of turn is checked by the turn model.

Wraps any `SttSession` that ends turns on silence (the embedded engine with a short timer,
Deepgram nova with its endpointing). Each `EndOfTurn` it emits is held until judged:

- a whole question as the recogniser wrote it ("Where are you located?"): the turn ends at once;
- a closing ("No thanks, that's all."): the turn ends after `fallback_ms` of silence, whatever
  the model would say (it doubts short closings on phone audio);
- the caller is done (Smart Turn says complete, and the text does not stop on "is", "and"... or
  in the middle of a phone number): the turn ends after `fallback_ms` of silence, the old timer
  (short pauses such as "No thanks ... that's all" stay inside the turn);
- not done: the turn is held, and ends only after `max_silence_ms` without speech (the ceiling).
  If the caller goes on, the next `EndOfTurn` is judged again with the texts joined;
- the model failed, was busy with other calls' pauses (its pool refuses what it could only
  queue), or gave no answer before the ceiling: the turn ends after `fallback_ms` of silence.

When the session can tell that the caller stopped speaking (`speaking`, the embedded VAD), the
model starts right then, beside the recogniser's decode of the last words, so the verdict is
usually ready when the text is. Times are on the call's audio clock (ms of caller audio fed);
the model runs on a worker thread, only at candidate turn ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from ivr import loopbound, metrics
from ivr.providers.base import CallContext, EndOfTurn, Final, Interim, SpeechStarted, SttEvent
from ivr.turn.model import WINDOW_S, SmartTurn, TurnModelBusy, TurnVerdict
from ivr.turn.words import sounds_like_a_goodbye, sounds_like_a_question, sounds_unfinished

log = logging.getLogger("ivr.turn")

ULAW_BYTES_PER_MS = 8
#: Wall-clock time past a held turn's wait after which it ends even if no audio came.
STALL_GRACE_S = 0.5
#: The least time a verdict is waited for, even when the ceiling's silence has already passed
#: (a cloud recogniser's end of turn can arrive late).
MIN_VERDICT_WAIT_MS = 100


@dataclass(frozen=True, slots=True)
class TurnOptions:
    #: P(complete) from the model at or above which the turn ends at once. High, because on
    #: phone-band audio the model calls many sentences broken off mid-way complete.
    threshold: float = 0.95
    #: The same once the caller has paused in this turn and gone on: what follows a pause is
    #: mostly the end of the sentence, so the model's own boundary applies.
    threshold_after_pause: float = 0.5
    #: Silence waited when the turn sounds unfinished (the ceiling).
    max_silence_ms: int = 1500
    #: Silence that ends the turn when the model could not judge it (the plain timer), and a
    #: statement it calls finished: "No thanks ... that's all" has a pause the timer always
    #: bridged, and a statement's answer is less urgent than a question's.
    fallback_ms: int = 600
    #: Audio before the turn's first speech that the model hears too.
    pre_speech_ms: int = 500
    #: Use the transcript's last words as well as the audio.
    use_text: bool = True

    def __post_init__(self) -> None:
        if not (0.0 < self.threshold < 1.0 and 0.0 < self.threshold_after_pause < 1.0):
            raise ValueError("the turn threshold must be between 0 and 1")
        if self.max_silence_ms < self.fallback_ms:
            raise ValueError("the longest wait cannot be shorter than the fallback timer")


@dataclass(frozen=True, slots=True)
class TurnDecision:
    """One candidate end of turn and what was decided (for logs and benchmarks)."""

    at_ms: int  # where the speech ended
    text: str  # the turn's text so far
    complete: bool
    probability: float | None  # None: not asked (the caller had gone on, or the model failed)
    unfinished_text: bool
    compute_ms: float  # the model's own time on its thread (wall clock)
    wait_ms: float  # from the candidate EndOfTurn reaching the gate to the decision (wall clock)
    question: bool = False  # ended as a whole question, without the model
    cpu_ms: float = 0.0  # the model's CPU time
    heard_ms: int = 0  # the silence after `at_ms` in the audio the model heard


class TurnGatedStt:
    """A `SpeechToText` whose sessions are gated by the turn model; anything else is the
    wrapped engine's (`options`, `vad`, `transcribe`...)."""

    def __init__(self, inner, model: SmartTurn, options: TurnOptions | None = None) -> None:
        self.inner = inner
        self.model = model
        self.turn_options = options or TurnOptions()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def load(self) -> None:
        await self.inner.load()
        await self.model.load()

    async def open(self, call: CallContext | None = None) -> "TurnGate":
        return TurnGate(await self.inner.open(call), self.model, self.turn_options)


_END = object()


@dataclass
class _Held:
    texts: list[str] = field(default_factory=list)
    at_ms: int = 0


class TurnGate:
    """One call's gated session (an `SttSession`)."""

    def __init__(self, inner, model: SmartTurn, options: TurnOptions) -> None:
        self._inner = inner
        self._model = model
        self._opts = options
        self._events: asyncio.Queue = loopbound.Queue()
        self._closed = False
        # The last seconds of caller audio, 8 kHz mu-law, for the model.
        self._audio = bytearray()
        self._audio_start_ms = 0
        self._fed_ms = 0
        self._keep_bytes = (WINDOW_S * 1000 + options.pre_speech_ms) * ULAW_BYTES_PER_MS
        self._turn_start_ms: int | None = None  # first speech of the turn being gated
        self._last_start_ms = -1  # last SpeechStarted
        self._judged_at_ms = 0  # audio clock when the model's last audio was taken
        self._idle = loopbound.Event()  # the pump waits for the wrapped session's next event
        self._was_speaking = False
        self._has_vad = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._early: asyncio.Task | None = None  # verdict started when the speech stopped
        self._held: _Held | None = None
        self._release_at_ms: int | None = None
        self._finalizing = False
        self._busy = False  # the last verdict was not waited for: the model had no time for it
        self.decisions: list[TurnDecision] = []
        self._pump = asyncio.ensure_future(self._run())

    # --- SttSession ----------------------------------------------------------------------------

    async def send(self, ulaw: bytes) -> None:
        if self._closed or not ulaw:
            return
        self._audio += ulaw
        self._fed_ms += len(ulaw) // ULAW_BYTES_PER_MS
        if len(self._audio) > self._keep_bytes + 8000:  # trim in blocks of 1 s
            drop = len(self._audio) - self._keep_bytes
            del self._audio[:drop]
            self._audio_start_ms += drop // ULAW_BYTES_PER_MS
        await self._inner.send(ulaw)
        speaking = getattr(self._inner, "speaking", None)
        if speaking is not None:
            # A session without a VAD may say True for ever (a cloud one): only one seen to say
            # False is believed.
            self._has_vad = self._has_vad or not speaking
            if self._was_speaking and not speaking and self._turn_start_ms is not None:
                self._start_early()
            elif speaking and not self._was_speaking:
                self._drop_early()
            self._was_speaking = speaking
        if self._held is not None and self._release_at_ms is not None and self._fed_ms >= self._release_at_ms \
                and not (self._has_vad and speaking):
            log.debug("turn held %d ms after speech: ending it", self._fed_ms - self._held.at_ms)
            self._release()

    async def finalize(self) -> None:
        self._finalizing = True
        await self._inner.finalize()
        # The wrapped session has queued its last events: let them through, then hold nothing.
        await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._idle.wait()
        if self._held is not None:
            self._release()
        self._finalizing = False

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_early()
        self._cancel_stall_timer()
        await self._inner.aclose()
        # Nothing more is let through: a verdict still being worked out is not waited for.
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pump
        self._events.put_nowait(_END)

    def expect(self, phrases) -> None:
        expect = getattr(self._inner, "expect", None)
        if expect is not None:
            expect(phrases)

    def __aiter__(self) -> "TurnGate":
        return self

    async def __anext__(self) -> SttEvent:
        event = await self._events.get()
        if event is _END:
            self._events.put_nowait(_END)
            raise StopAsyncIteration
        return event

    @property
    def speaking(self) -> bool:
        return getattr(self._inner, "speaking", True)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    # --- the gate ------------------------------------------------------------------------------

    async def _run(self) -> None:
        events = aiter(self._inner)
        try:
            while True:
                self._idle.set()
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                self._idle.clear()
                await self._on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("turn gate failed; the bot no longer hears this caller's turns")
        finally:
            self._idle.set()
            if self._held is not None and not self._closed:
                self._release()
            if not self._closed:
                self._events.put_nowait(_END)

    async def _on_event(self, event: SttEvent) -> None:
        if isinstance(event, SpeechStarted):
            if self._turn_start_ms is None:
                self._turn_start_ms = event.at_ms
            self._last_start_ms = max(self._last_start_ms, event.at_ms)
            if self._held is not None:
                # The caller goes on: the held turn waits for their next end of turn. A session
                # with a VAD always ends the speech it started (with an empty turn if no words
                # came); for one without, the ceiling counts from here, and words on the way
                # push it on, so a start that brings nothing cannot hold the turn for ever.
                self._release_at_ms = None if self._has_vad else event.at_ms + self._opts.max_silence_ms
            self._drop_early()
        elif isinstance(event, (Interim, Final)):
            if self._held is not None and self._release_at_ms is not None:
                self._release_at_ms = max(self._release_at_ms, event.end_ms + self._opts.max_silence_ms)
        elif isinstance(event, EndOfTurn):
            await self._on_end_of_turn(event)
            return
        self._events.put_nowait(event)

    async def _on_end_of_turn(self, event: EndOfTurn) -> None:
        held = self._held
        if not event.text and held is None:
            # Speech without words (a cough): nothing to judge; the engine may resume its turn.
            self._turn_start_ms = None
            self._drop_early()
            self._events.put_nowait(event)
            return
        texts = (held.texts if held else []) + ([event.text] if event.text else [])
        text = " ".join(texts)
        if self._finalizing:
            self._end(text, event.at_ms)
            return
        received = time.perf_counter()
        unfinished = self._opts.use_text and sounds_unfinished(text)
        question = self._opts.use_text and not unfinished and sounds_like_a_question(text)
        goodbye = self._opts.use_text and not unfinished and not question and sounds_like_a_goodbye(text)
        # The caller already went on (a start after this end): no need to ask.
        resumed = self._last_start_ms > event.at_ms
        verdict: TurnVerdict | None = None
        if question or goodbye:
            # A whole question (answered at once) or a closing (ended by the plain timer): the
            # text has decided, the model is not waited for.
            early, self._early = self._early, None
            if early is not None and early.done() and not early.cancelled() and early.exception() is None:
                verdict = early.result()
            elif early is not None:
                early.cancel()
        elif not resumed:
            silence_ms = self._fed_ms - event.at_ms
            # Bounded by the ceiling: past it the turn would end whatever the model said. (The
            # model's pool refuses work it could only queue, so a wait is one or two decisions
            # long unless the machine is starved.)
            verdict = await self._verdict(max(MIN_VERDICT_WAIT_MS, self._opts.max_silence_ms - silence_ms) / 1000)
        if self._closed:
            return
        threshold = self._opts.threshold_after_pause if held is not None else self._opts.threshold
        complete = not resumed and (question or goodbye or (verdict is not None and verdict.probability >= threshold
                                                            and not unfinished))
        decision = TurnDecision(event.at_ms, text, complete, verdict.probability if verdict else None, unfinished,
                                verdict.compute_ms if verdict else 0.0, (time.perf_counter() - received) * 1000,
                                question, verdict.cpu_ms if verdict else 0.0,
                                self._judged_at_ms - event.at_ms if verdict else 0)
        self.decisions.append(decision)
        if verdict is not None:
            metrics.TURN_MODEL_SECONDS.observe(verdict.compute_ms / 1000)
        outcome = ("question" if question else "ended") if complete else (
            "resumed" if resumed else "held_words" if unfinished else "held_model" if verdict is not None
            else "model_busy" if self._busy else "model_failed")
        metrics.TURN_DECISIONS.labels(outcome).inc()
        log.debug("end of turn? %s p=%s unfinished_text=%s question=%s %r", complete,
                  "-" if verdict is None else f"{verdict.probability:.2f}", unfinished, question, text)
        if complete and (question or self._fed_ms >= event.at_ms + self._opts.fallback_ms):
            self._end(text, event.at_ms)
            return
        self._held = held = _Held(texts, event.at_ms)
        # A finished statement or a model that failed: the plain timer; otherwise the ceiling.
        wait = self._opts.fallback_ms if complete or (verdict is None and not resumed) else self._opts.max_silence_ms
        self._release_at_ms = event.at_ms + wait
        if resumed:
            # The caller is already on the next words: as for a start while held (see _on_event).
            self._release_at_ms = None if self._has_vad else self._last_start_ms + self._opts.max_silence_ms
        # The audio clock ends the wait; should the caller's audio stop coming (a stalled
        # stream, audio sent faster than real time), the wall clock ends it a little later.
        self._cancel_stall_timer()
        self._stall_timer = asyncio.get_running_loop().call_later(wait / 1000 + STALL_GRACE_S, self._release_stalled, held)

    def _release_stalled(self, held: _Held) -> None:
        self._stall_timer = None
        if self._held is held and self._last_start_ms <= held.at_ms and not self._closed:
            log.debug("no caller audio for the held turn's wait: ending it")
            self._release()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    async def _verdict(self, wait_s: float) -> TurnVerdict | None:
        """The model's verdict, or None when it failed or did not come within `wait_s`."""
        task = self._early
        self._early = None
        if task is None:
            task = self._judge_now()
        self._busy = False
        try:
            async with asyncio.timeout(wait_s):
                return await task
        except (TimeoutError, TurnModelBusy):
            self._busy = True
            return None
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():
                raise
            return None
        except Exception:
            log.exception("turn model failed: the plain timer ends this turn")
            return None

    def _judge_now(self) -> asyncio.Future:
        self._judged_at_ms = self._fed_ms
        start = max(self._audio_start_ms, (self._turn_start_ms or 0) - self._opts.pre_speech_ms)
        ulaw = bytes(self._audio[(start - self._audio_start_ms) * ULAW_BYTES_PER_MS :])
        return asyncio.ensure_future(self._model.judge(ulaw))

    def _start_early(self) -> None:
        self._drop_early()
        self._early = self._judge_now()

    def _drop_early(self) -> None:
        if self._early is not None:
            self._early.cancel()
            self._early = None

    def _end(self, text: str, at_ms: int) -> None:
        self._cancel_stall_timer()
        self._held = None
        self._release_at_ms = None
        self._turn_start_ms = None
        self._drop_early()
        self._events.put_nowait(EndOfTurn(text, at_ms))

    def _release(self) -> None:
        held = self._held
        if held is not None:
            self._end(" ".join(held.texts), held.at_ms)
