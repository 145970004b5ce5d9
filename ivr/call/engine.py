"""The conversation engine: one `Call` per Media Stream.

Two kinds of task, under one task group per call:
- the caller task reads the speech-to-text session's events (speech started, text, end of turn);
- one task per bot turn runs brain -> text pieces -> TTS -> 20 ms frames -> the line, with a mark
  after each piece.

Barge-in closes the turn's gate (no frame of that turn can be sent after it), sends `clear`, and
cancels the turn's task, which cancels its brain and TTS work. What the caller heard of each bot
turn comes from its `HeardLedger`, and only that goes into the history the brain sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterable

from ivr import metrics
from ivr.audio import FRAME_BYTES, FRAME_MS, Framer, PhoneEncoder
from ivr.audio.dtmf import dtmf_ulaw
from ivr.call.events import Listener, cut_event, latency_event
from ivr.call.ledger import HeardLedger
from ivr.call.speculation import Speculation
from ivr.call.splitter import SplitOptions, TextSplitter
from ivr.call.twilio_rest import TwilioRest, TwilioRestError
from ivr.providers.base import (
    BrainOutput,
    CallContext,
    CallerInput,
    EagerEndOfTurn,
    EndOfTurn,
    Final,
    SpeechStarted,
    TextDelta,
    ToolCall,
    Turn,
    TurnResumed,
)
from ivr.providers.registry import Providers
from ivr.session import Line, ListeningHandler
from ivr.telephony import twiml

#: Everything but letters, digits, apostrophes and hyphens ("uh-huh"): backchannels ignore punctuation.
_NOT_A_WORD = re.compile(r"[^\w\s'-]")

log = logging.getLogger("ivr.call")

ARRIVALS_KEPT = 500  # 10 s of frames
#: Not "yes" or "sure": cutting in with those usually answers the bot's question.
DEFAULT_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm", "okay", "ok", "yeah", "yep", "right",
    "i see", "got it", "alright", "all right",
)  # fmt: skip


class CallState(enum.Enum):
    GREETING = "greeting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    TRANSFERRING = "transferring"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(frozen=True)
class CallOptions:
    split: SplitOptions = field(default_factory=SplitOptions)
    #: The caller may talk over the bot (speech stops the bot at once).
    barge_in: bool = True
    #: Speech must last this long (ms of caller audio) before it stops the bot; 0: at once.
    min_speech_ms: int = 0
    #: Words that, alone, are acknowledgements rather than turns: if such an utterance (or no
    #: words at all: a cough) cut the bot off, the bot resumes from the cut sentence.
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    resume_after_false_interruption: bool = True
    #: Caller silence (after the bot has finished) before a re-prompt, and how many re-prompts
    #: before the bot says goodbye.
    reprompt_after_ms: int = 8000
    max_reprompts: int = 2
    max_call_ms: int = 30 * 60 * 1000
    goodbye: str = "It seems we've lost each other. Thank you for calling, goodbye."
    time_limit_goodbye: str = "I'm sorry, we have reached the time limit for this call. Goodbye."
    #: After the last goodbye is queued, how long to wait for its mark before hanging up anyway.
    goodbye_timeout_ms: int = 15000


class PromptCache:
    """Rendered prompts as 8 kHz mu-law frames, shared by every call of the process, so the
    greeting and the flow's fixed replies start with no synthesis delay."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, ...]] = OrderedDict()
        self._bytes = 0

    def get(self, text: str) -> tuple[bytes, ...] | None:
        frames = self._items.get(text)
        if frames is not None:
            self._items.move_to_end(text)
        return frames

    def put(self, text: str, frames: Iterable[bytes]) -> None:
        frames = tuple(frames)
        if text in self._items or not frames:
            return
        self._items[text] = frames
        self._bytes += len(frames) * FRAME_BYTES
        while self._bytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old) * FRAME_BYTES


class _TurnCancelled(Exception):
    pass


class BotTurn:
    """One bot turn: its ledger, its gate, its task, and the tools it asked for."""

    def __init__(self, number: int, resumable: bool = True) -> None:
        self.number = number
        self.ledger = HeardLedger()
        self.gate_open = True
        self.task: asyncio.Task | None = None
        self.tools: list[ToolCall] = []
        self.first_audio_at: float | None = None
        self.started_at = time.monotonic()
        self.all_marked = asyncio.Event()
        self.resumable = resumable
        self.done_generating = False
        self.timing: TurnTiming | None = None
        self._heard: Turn | None = None
        self._settled = False

    def heard(self) -> Turn | None:
        """This turn as the caller heard it, for the history (None: nothing was said)."""
        if self._settled:
            return self._heard
        text, cut = self.ledger.heard_text()
        turn = Turn("bot", text, interrupted=cut) if text or cut else None
        # Settled once every mark is back or a clear cut it: later echoes change nothing.
        if self.done_generating and (self.ledger.all_played or self.ledger.cleared_at is not None):
            self._settled, self._heard = True, turn
        return turn

    def mark_name(self, piece: int) -> str:
        return f"t{self.number}-p{piece}"

    @property
    def audible(self) -> bool:
        """The bot is (or will be) heard: generating, or audio not yet played out."""
        if not self.gate_open:
            return False
        if not self.done_generating:
            return True
        return not self.ledger.all_played


@dataclass
class TurnTiming:
    """Where one answer's time went; monotonic seconds. Speech end is when the audio in which
    the caller stopped speaking reached us."""

    speech_end_at: float | None
    end_of_turn_at: float
    brain_first_at: float | None = None
    first_audio_at: float | None = None


@dataclass
class CallStats:
    """Figures for benchmarks and reports: times are monotonic seconds."""

    start_at: float = 0.0
    greeting_first_audio_at: float | None = None
    answers: list[TurnTiming] = field(default_factory=list)
    barge_ins: int = 0


class Call(ListeningHandler):
    """The call handler the server drives (see ivr.session.CallHandler)."""

    def __init__(self, line: Line, providers: Providers, options: CallOptions | None = None,
                 cache: PromptCache | None = None, rest: TwilioRest | None = None,
                 listener: Listener | None = None) -> None:
        #: Gets small dict events (ivr.call.events); None for most calls, which then pay nothing.
        self.listener = listener
        super().__init__(line)
        self.log = line.log
        self.providers = providers
        self.options = options or CallOptions()
        self.cache = cache if cache is not None else PromptCache()
        self.rest = rest
        self.state = CallState.GREETING
        self.stats = CallStats(start_at=time.monotonic())
        self.history: list[tuple[str, str | BotTurn]] = []  # ("caller", text) | ("bot", turn)
        self._pending_audio: list[bytes] = []
        #: (caller audio ms, arrival time) of recent frames: dates the end of the caller's speech.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._pending_timing: TurnTiming | None = None
        self._barge_pending_at: int | None = None  # speech start awaiting min_speech_ms
        self._speculation: Speculation | None = None
        self._stt = None
        self._brain = None
        self._turn: BotTurn | None = None
        self._turns = itertools.count(1)
        self._interrupted: BotTurn | None = None
        self._silent_since_ms: int | None = None
        self._reprompts = 0
        self._ending = False
        self._main: asyncio.Task | None = None
        self._group: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._backchannels = {b.lower() for b in self.options.backchannels}
        #: Awaited before the greeting; returns the context the brain gets (ivr.outbound.amd:
        #: an outbound call waits for the answering-machine verdict). None: greet at once.
        self.before_greeting: Callable[[CallContext], Awaitable[CallContext]] | None = None
        self._awaiting_answer = False

    @property
    def state(self) -> CallState:
        return self._state

    @state.setter
    def state(self, value: CallState) -> None:
        if getattr(self, "_state", None) is not value:
            self._state = value
            if self.listener is not None:
                self._emit({"type": "state", "state": value.value})

    def _emit(self, event: dict) -> None:
        if self.listener is None:
            return
        try:
            self.listener(event)
        except Exception:
            self.log.exception("call event listener failed on %s", event.get("type"))

    # --- events from the line -------------------------------------------------------------

    async def on_start(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"call-{self.line.start.call_sid}")

    async def on_dtmf(self, digit: str) -> None:
        await self._caller_input(CallerInput(dtmf=digit))

    async def close(self, reason: str) -> None:
        self._closed.set()
        self.state = CallState.ENDED
        self._emit({"type": "ended", "reason": reason})
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        for closer in (self._stt, self._brain):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.aclose()

    # --- the call's own task --------------------------------------------------------------

    async def _run(self) -> None:
        start = self.line.start
        ctx = CallContext(call_sid=start.call_sid, stream_sid=start.stream_sid, parameters=dict(start.custom_parameters))
        if self.before_greeting is not None:
            # Nothing heard before the verdict (a machine's greeting, its beep, a person's
            # "hello?") is a turn to answer, and no re-prompt may fire meanwhile.
            self._awaiting_answer = True
            try:
                ctx = await self.before_greeting(ctx)
            finally:
                self._awaiting_answer = False
                self._pending_audio.clear()
                self._silent_since_ms = None
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._brain = await self.providers.brain.open(ctx)
                self._begin_turn(self._brain.greeting(), greeting=True)
                self._stt = await self.providers.stt.open(ctx)
                self._ready.set()
                for frame in self._pending_audio:
                    await self._stt.send(frame)
                self._pending_audio.clear()
                group.create_task(self._read_stt(), name="stt")
                await self._closed.wait()
                raise _TurnCancelled  # leave the group, cancelling what is left
        except* _TurnCancelled:
            pass
        except* Exception as errors:
            for exc in errors.exceptions:
                self.log.exception("call engine failed: %r", exc)

    def _arrival_of(self, at_ms: int) -> float | None:
        for ms, t in reversed(self._arrivals):
            if ms <= at_ms:
                return t
        return None

    async def on_caller_frames(self, frames: list[bytes]) -> None:
        if frames:
            self._arrivals.append((self.caller_ms + FRAME_MS * len(frames), time.monotonic()))
        for frame in frames:
            self.caller_ms += FRAME_MS
            if self._stt is not None and self._ready.is_set():
                await self._stt.send(frame)
            else:
                self._pending_audio.append(frame)
        if frames:
            if self._barge_pending_at is not None:
                await self._check_pending_barge_in()
            self._check_timers()

    async def _check_pending_barge_in(self) -> None:
        at_ms = self._barge_pending_at
        if at_ms is None or self.caller_ms - at_ms < self.options.min_speech_ms:
            return
        self._barge_pending_at = None
        if getattr(self._stt, "speaking", True):
            await self._barge_in(at_ms)
        else:
            self.log.debug("speech at %d ms was shorter than %d ms: no barge-in", at_ms, self.options.min_speech_ms)

    def _check_timers(self) -> None:
        if self._ending or self._awaiting_answer:
            return
        if self.caller_ms >= self.options.max_call_ms:
            self.log.info("call reached its time limit (%d ms)", self.options.max_call_ms)
            self._say_goodbye(self.options.time_limit_goodbye)
            return
        turn = self._turn
        if turn is not None and turn.audible:
            self._silent_since_ms = None
            return
        if self._silent_since_ms is None:
            self._silent_since_ms = self.caller_ms
        elif self.caller_ms - self._silent_since_ms >= self.options.reprompt_after_ms:
            self._silent_since_ms = None
            self._reprompts += 1
            if self._reprompts > self.options.max_reprompts:
                self.log.info("no answer after %d re-prompts", self.options.max_reprompts)
                self._say_goodbye(self.options.goodbye)
            elif self._brain is not None:
                self.log.info("caller silent for %d ms: re-prompt %d", self.options.reprompt_after_ms, self._reprompts)
                self._begin_turn(self._brain.respond(self._history(), CallerInput()))

    # --- the caller -----------------------------------------------------------------------

    async def _read_stt(self) -> None:
        try:
            await self._read_stt_events()
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("speech-to-text failed: the bot can no longer hear this caller")

    async def _read_stt_events(self) -> None:
        turn_texts: list[str] = []
        async for event in self._stt:
            if isinstance(event, SpeechStarted):
                self._silent_since_ms = None
                if self.options.min_speech_ms and self.caller_ms - event.at_ms < self.options.min_speech_ms:
                    self._barge_pending_at = event.at_ms
                else:
                    await self._barge_in(event.at_ms)
            elif isinstance(event, Final):
                turn_texts.append(event.text)
            elif isinstance(event, EagerEndOfTurn):
                self._speculate(event.text)
            elif isinstance(event, TurnResumed):
                self._drop_speculation()
            elif isinstance(event, EndOfTurn):
                self._barge_pending_at = None
                text = (event.text or " ".join(turn_texts)).strip()
                turn_texts.clear()
                self._pending_timing = TurnTiming(self._arrival_of(event.at_ms), time.monotonic())
                await self._end_of_caller_turn(text)

    async def _end_of_caller_turn(self, text: str) -> None:
        if text:
            self._emit({"type": "caller", "text": text})
        interrupted = self._interrupted
        if interrupted is not None and self._is_backchannel(text):
            self._interrupted = None
            if self.options.resume_after_false_interruption and interrupted.resumable:
                self.log.info("false interruption (%r): resuming the cut sentence", text)
                self._pending_timing = None
                self._resume(interrupted)
                return
        if not text:
            self._pending_timing = None
            return
        self._interrupted = None
        self._reprompts = 0
        self.log.info("caller said: %s", text)
        await self._caller_input(CallerInput(text=text))

    def _is_backchannel(self, text: str) -> bool:
        # Punctuation is the recogniser's guess ("Okay." or "Okay?" for the same murmur): words only.
        words = " ".join(_NOT_A_WORD.sub(" ", text.lower()).split())
        if not words:
            return True
        return words in self._backchannels or all(w in self._backchannels for w in words.split())

    async def _caller_input(self, caller: CallerInput) -> None:
        if self._brain is None or self._ending:
            return
        if self._turn is not None and self._turn.audible:
            # The caller acts while the bot talks (keys, or barge-in off): stop the bot first.
            await self._cut(self._turn, reason="caller input")
        history = self._history()
        speculation, self._speculation = self._speculation, None
        if caller.text:
            self.history.append(("caller", caller.text))
        elif caller.dtmf:
            self.history.append(("caller", f"[pressed {caller.dtmf}]"))
        self.state = CallState.THINKING
        if speculation is not None and caller.text and speculation.matches(caller.text):
            self.log.debug("the turn ended as guessed: speaking the reply already begun")
            self._begin_turn(speculation.replay())
            return
        if speculation is not None:
            speculation.cancel()
        self._begin_turn(self._brain.respond(history, caller))

    def _speculate(self, text: str) -> None:
        """Start the reply to a turn that is probably over (see ivr.call.speculation)."""
        self._drop_speculation()
        if not text or self._ending or self._group is None or not getattr(self._brain, "speculative", False):
            return
        history = self._history()
        self._speculation = Speculation(text, self._brain.respond(history, CallerInput(text=text)), self._group)

    def _drop_speculation(self) -> None:
        if self._speculation is not None:
            self._speculation.cancel()
            self._speculation = None

    def _history(self) -> list[Turn]:
        turns: list[Turn] = []
        for role, item in self.history:
            if role == "caller":
                turns.append(Turn("caller", item))  # type: ignore[arg-type]
            else:
                turn = item.heard()  # type: ignore[union-attr]
                if turn is not None:
                    turns.append(turn)
        return turns

    # --- barge-in -------------------------------------------------------------------------

    async def _barge_in(self, at_ms: int) -> None:
        turn = self._turn
        if not self.options.barge_in or turn is None or not turn.audible or self._ending:
            return
        self.stats.barge_ins += 1
        self.log.info("barge-in at %d ms: clearing the bot's audio", at_ms)
        self._interrupted = turn
        await self._cut(turn, reason="barge-in")
        metrics.observe_barge_in(self._arrival_of(at_ms), time.monotonic())

    async def _cut(self, turn: BotTurn, reason: str) -> None:
        """Stop a turn: no frame after this; Twilio drops what it buffered; work is cancelled."""
        turn.gate_open = False
        sent_audio = turn.first_audio_at is not None
        if sent_audio:
            await self.line.send_clear()
        turn.ledger.cleared(time.monotonic())
        if self.listener is not None:
            self._emit(cut_event(turn, reason))
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()
        self.state = CallState.LISTENING
        self.log.debug("turn %d cut (%s)", turn.number, reason)

    def _resume(self, turn: BotTurn) -> None:
        """Say again what the caller did not hear of a cut turn: from its cut piece on."""
        turn.ledger.heard_text()
        rest = " ".join(p.text for p in turn.ledger.pieces[turn.ledger.first_unheard :] if p.text)
        tools = list(turn.tools)

        async def replay() -> AsyncIterator[BrainOutput]:
            if rest:
                yield TextDelta(rest)
            for tool in tools:
                yield tool

        # The cut turn's history entry stays (what was heard); the resumed part is a new turn.
        self._begin_turn(replay())

    # --- bot turns ------------------------------------------------------------------------

    def _begin_turn(self, outputs: AsyncIterator[BrainOutput], greeting: bool = False) -> BotTurn:
        previous = self._turn
        if previous is not None and previous.task is not None and not previous.task.done():
            previous.gate_open = False
            previous.task.cancel()
        turn = BotTurn(next(self._turns))
        self._turn = turn
        self.history.append(("bot", turn))
        if self._pending_timing is not None:
            turn.timing, self._pending_timing = self._pending_timing, None
            self.stats.answers.append(turn.timing)
        self.state = CallState.GREETING if greeting else CallState.THINKING
        assert self._group is not None
        turn.task = self._group.create_task(self._run_turn(turn, outputs, greeting), name=f"turn-{turn.number}")
        return turn

    async def _run_turn(self, turn: BotTurn, outputs: AsyncIterator[BrainOutput], greeting: bool) -> None:
        tts = None
        tts_iter = None
        queue: asyncio.Queue = asyncio.Queue()

        async def add_piece(text: str) -> None:
            nonlocal tts, tts_iter
            index = len(turn.ledger.pieces)
            turn.ledger.add(index, text)
            self._emit({"type": "bot", "turn": turn.number, "piece": index, "mark": turn.mark_name(index), "text": text})
            cached = self.cache.get(text)
            tts_piece = -1
            if cached is None:
                if tts is None:
                    tts = self.providers.tts.stream()
                    tts_iter = tts.__aiter__()
                # The TTS numbers only the pieces it is given; cached ones never reach it.
                tts_piece = await tts.push(text)
            await queue.put((index, cached, tts_piece))

        async def feed() -> None:
            splitter = TextSplitter(self.options.split)
            try:
                async for out in outputs:
                    if turn.timing is not None and turn.timing.brain_first_at is None:
                        turn.timing.brain_first_at = time.monotonic()
                    if isinstance(out, TextDelta):
                        for piece in splitter.push(out.text):
                            await add_piece(piece)
                    elif isinstance(out, ToolCall):
                        turn.tools.append(out)
                for piece in splitter.flush():
                    await add_piece(piece)
            finally:
                with contextlib.suppress(Exception):
                    await outputs.aclose()  # type: ignore[attr-defined]
            if tts is not None:
                await tts.end()
            await queue.put(None)

        async def speak() -> None:
            while (item := await queue.get()) is not None:
                index, cached, tts_piece = item
                if cached is not None:
                    for frame in cached:
                        await self._send(turn, index, frame)
                else:
                    frames = await self._speak_piece(turn, index, tts_iter, tts_piece)
                    if turn.gate_open:
                        self.cache.put(turn.ledger.piece(index).text, frames)
                if not turn.gate_open:
                    return
                mark = turn.mark_name(index)
                turn.ledger.marked(index, mark, time.monotonic())
                await self.line.send_mark(mark)

        spoken = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                group.create_task(speak())
            spoken = True
            turn.done_generating = True
            if turn.ledger.all_played or not turn.ledger.pieces:
                turn.all_marked.set()
            if turn.first_audio_at is not None:
                self.state = CallState.SPEAKING
            await self._run_tools(turn)
            if self.state in (CallState.SPEAKING, CallState.THINKING, CallState.GREETING):
                self.state = CallState.LISTENING
        except asyncio.CancelledError:
            raise
        except Exception:
            # A broken provider costs this turn, not the call: the caller can still speak.
            self.log.exception("bot turn %d failed", turn.number)
            self.state = CallState.LISTENING
        finally:
            turn.done_generating = True
            if tts is not None and not spoken:
                # Cut, failed or the call ended: free the TTS worker now (a cancelled task may
                # still await here: the cancel is the cleanup itself).
                with contextlib.suppress(Exception):
                    await tts.cancel()

    async def _speak_piece(self, turn: BotTurn, index: int, tts_iter, tts_piece: int) -> list[bytes]:
        """Send one piece's audio as it is synthesised; returns its frames (for the cache)."""
        frames: list[bytes] = []
        encoder: PhoneEncoder | None = None
        while True:
            try:
                chunk = await tts_iter.__anext__()
            except StopAsyncIteration:
                self.log.warning("the TTS stream ended before piece %d was complete", index)
                break
            if chunk.piece != tts_piece:
                self.log.warning("TTS chunk for piece %d while speaking piece %d; dropped", chunk.piece, tts_piece)
                continue
            if chunk.audio:
                if encoder is None:
                    encoder = PhoneEncoder(8000 if chunk.encoding == "ulaw" else chunk.sample_rate)
                out = encoder.push_ulaw(chunk.audio) if chunk.encoding == "ulaw" else encoder.push(chunk.audio)
                # A chunk's word timings count once (with its first frame), not once per frame.
                words = chunk.words
                for frame in out:
                    await self._send(turn, index, frame, words)
                    words = ()
                    frames.append(frame)
            if chunk.last:
                break
        if encoder is not None:
            for frame in encoder.flush():
                await self._send(turn, index, frame)
                frames.append(frame)
        return frames

    async def _send(self, turn: BotTurn, index: int, frame: bytes, words=()) -> None:
        if not turn.gate_open:
            raise asyncio.CancelledError  # the turn was cut while this frame was being made
        now = time.monotonic()
        if turn.first_audio_at is None:
            turn.first_audio_at = now
            self.state = CallState.SPEAKING
            if turn.number == 1:
                self.stats.greeting_first_audio_at = now
                self._emit({"type": "latency", "turn": 1, "greeting": True, "total_ms": round((now - self.stats.start_at) * 1000, 1)})
                metrics.GREETING_LATENCY.observe(now - self.stats.start_at)
            elif turn.timing is not None:
                turn.timing.first_audio_at = now
                self._emit(latency_event(turn.number, turn.timing))
                metrics.observe_answer(turn.timing)
        turn.ledger.sent_audio(index, FRAME_MS, now, words)
        await self.line.send_media(frame)

    def on_mark(self, name: str) -> None:
        turn = self._turn
        now = time.monotonic()
        if turn is not None and turn.ledger.echoed(name, now):
            if turn.done_generating and turn.ledger.all_played:
                turn.all_marked.set()
            return
        # A mark of an earlier turn (echoed late, or returned by a clear).
        for role, item in reversed(self.history):
            if role == "bot" and item is not turn and item.ledger.echoed(name, now):  # type: ignore[union-attr]
                return

    # --- tools ----------------------------------------------------------------------------

    async def _run_tools(self, turn: BotTurn) -> None:
        for tool in turn.tools:
            self._emit({"type": "tool", "turn": turn.number, "name": tool.name, "arguments": dict(tool.arguments)})
            if tool.name == "hangup":
                await self._wait_heard(turn)
                await self._hang_up()
            elif tool.name == "transfer":
                await self._wait_heard(turn)
                await self._transfer(str(tool.arguments.get("to", "")), str(tool.arguments.get("summary", "")))
            elif tool.name == "send_dtmf":
                digits = str(tool.arguments.get("digits", ""))
                self.log.info("sending DTMF %s", digits)
                framer = Framer(FRAME_BYTES)
                index = len(turn.ledger.pieces)
                turn.ledger.add(index, "")
                for frame in framer.push(dtmf_ulaw(digits)) + framer.flush():
                    await self._send(turn, index, frame)
            else:
                self.log.info("custom tool %s(%s) requested; no handler is registered", tool.name, dict(tool.arguments))

    async def _wait_heard(self, turn: BotTurn) -> None:
        """Until the caller has heard the turn (its last mark is back), within a time limit."""
        if not turn.ledger.pieces:
            return
        try:
            async with asyncio.timeout(self.options.goodbye_timeout_ms / 1000):
                await turn.all_marked.wait()
        except TimeoutError:
            self.log.warning("the bot's last words were not confirmed played; going on")

    def _say_goodbye(self, text: str) -> None:
        self._ending = True

        async def goodbye() -> AsyncIterator[BrainOutput]:
            yield TextDelta(text)
            yield ToolCall("hangup", {}, "goodbye")

        if self._group is not None:
            self._begin_turn(goodbye())

    async def drain(self, goodbye: str, transfer_to: str = "") -> None:
        """The server is going away (ivr.drain): stop the bot, say `goodbye`, and once it has been
        heard hang up, or transfer to `transfer_to`. A call already ending is left to end."""
        if self._ending:
            return
        if self._group is None:  # the engines never opened: nothing to say with
            await self._hang_up()
            return
        if self._turn is not None and self._turn.audible:
            await self._cut(self._turn, reason="drain")
        self._ending = True
        summary = "The assistant's server restarted during the call."
        last = ToolCall("transfer", {"to": transfer_to, "summary": summary}, "drain") if transfer_to else ToolCall("hangup", {}, "drain")

        async def words() -> AsyncIterator[BrainOutput]:
            yield TextDelta(goodbye)
            yield last

        self._begin_turn(words())

    async def _hang_up(self) -> None:
        self._ending = True
        self.state = CallState.ENDING
        self.log.info("the bot ends the call")
        self.line.ended_by_bot = True
        if self.rest is not None:
            try:
                await self.rest.hang_up(self.line.start.call_sid)
            except TwilioRestError as exc:
                self.log.warning("%s; closing the stream instead", exc)
        await self.line.hang_up()

    async def _transfer(self, target: str, summary: str) -> None:
        if not target:
            self.log.warning("transfer requested without a target; ignored")
            return
        self.state = CallState.TRANSFERRING
        self._ending = True
        doc = twiml.transfer_sip(target, summary) if target.startswith(("sip:", "sips:")) else twiml.transfer_number(target)
        self.log.info("transferring the call to %s", self.log.mask(target))
        metrics.TRANSFERS.labels("sip" if target.startswith(("sip:", "sips:")) else "number").inc()
        self.line.transfer_twiml = doc
        if self.rest is not None:
            try:
                await self.rest.update_twiml(self.line.start.call_sid, doc)
                return
            except TwilioRestError as exc:
                self.log.warning("%s; handing the transfer to the stream's fallback instead", exc)
        # Without the REST API: end the stream; Twilio then fetches /twiml/fallback, which
        # serves this transfer (see ivr.server).
        await self.line.hang_up()
