"""The conversation engine: one `Call` per Media Stream.

Tasks under one task group per call:
- the caller task reads the speech-to-text session's events (speech started, text, end of turn);
- one task per bot turn makes and sends its words (ivr.call.speaker), paced on the playout clock
  (ivr.call.playout), then carries out its tools (hang up, transfer, DTMF);
- the timer task runs the clock's deadlines: re-prompts, the call-time limit, the verdict on a
  pause whose words never come. Timers run on the clock, not on caller frames.

How the call ends or moves on (tools, goodbyes, drain) is in ivr.call.ending.

Turn-taking is the table in ivr.call.turns; speech over the bot pauses it and the policy in
ivr.call.interruption decides whether to carry on or give the turn up. What the caller heard of
each bot turn (its `HeardLedger`, kept by the playout clock) is all the brain's history holds.

The carrier's capabilities come in as plain flags (`marks`, and `line.has_clear`) and its call
control as one interface (ivr.telephony.control): nothing here branches on which carrier it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from time import monotonic
from typing import AsyncIterator, Awaitable, Callable

from ivr import loopbound
from ivr import metrics
from ivr.audio import FRAME_MS
from ivr.call.cache import PromptCache
from ivr.call.ending import Endings
from ivr.call.events import Listener, cut_event, latency_event
from ivr.call.interruption import Interruption, InterruptionRules, Verdict, is_backchannel
from ivr.call.options import CallOptions
from ivr.call.playout import PlayoutClock
from ivr.call.speaker import Speaker
from ivr.call.speculation import Speculation
from ivr.call.timebase import Timebase, WallTime
from ivr.call.turn import BotTurn, CallStats, TurnTiming
from ivr.call.turns import BOT_HAS_FLOOR, Action, CallState, Event, TurnTaking
from ivr.providers.base import (
    BrainOutput,
    CallContext,
    CallerInput,
    EagerEndOfTurn,
    EndOfTurn,
    Final,
    SpeechStarted,
    Turn,
    TurnResumed,
)
from ivr.providers.registry import Providers
from ivr.session import Line, ListeningHandler, is_disconnect
from ivr.telephony.control import CallControl

__all__ = ["BotTurn", "Call", "CallOptions", "CallState", "CallStats", "PromptCache", "TurnTiming"]

ARRIVALS_KEPT = 500  # 10 s of frames
#: How often the timer task looks at the clock while nothing else wakes it.
TICK_S = 0.1


class _CallOver(Exception):
    pass


class Call(Endings, ListeningHandler):
    """The call handler the server drives (see ivr.session.CallHandler)."""

    def __init__(self, line: Line, providers: Providers, options: CallOptions | None = None,
                 cache: PromptCache | None = None, control: CallControl | None = None,
                 listener: Listener | None = None, *, time: Timebase | None = None, marks: bool = True) -> None:
        #: Gets small dict events (ivr.call.events); None for most calls, which then pay nothing.
        self.listener = listener
        super().__init__(line)
        self.log = line.log
        self.providers = providers
        self.options = o = options or CallOptions()
        self.cache = cache if cache is not None else PromptCache()
        #: Hangs up or transfers through the carrier (ivr.telephony.control); None: the
        #: stream's end does it.
        self.control = control
        self.time = time or WallTime()
        self.clock = PlayoutClock(margin_s=o.mark_margin_ms / 1000)
        #: Carrier capabilities: without marks nothing waits for echoes; without clear a pause
        #: stops feeding the line and lets the lead play out.
        self.has_marks = marks and getattr(line, "has_marks", True)
        self.has_clear = getattr(line, "has_clear", True)
        self.turns = TurnTaking()
        self.stats = CallStats(start_at=monotonic())  # figures are wall time, whatever the clock
        self._started = self.time.now()
        self.history: list[tuple[str, str | BotTurn]] = []  # ("caller", text) | ("bot", turn)
        # The lead guards against this process being late (wall time): a clock run faster than
        # real time (a replay) keeps the same margin in wall time.
        # A carrier with no queue to clear plays whatever it is sent: it takes only a small lead.
        lead_ms = min(o.playout_lead_ms, getattr(line, "max_lead_ms", o.playout_lead_ms))
        lead_s = lead_ms / 1000 * getattr(self.time, "rate", 1.0)
        self.speaker = Speaker(line, self.clock, self.time, providers.tts, self.cache, o.split,
                               lead_s, self.has_marks, o.goodbye_timeout_ms / 1000,
                               self._first_audio, self._emit, self.log)
        self._rules = InterruptionRules(frozenset(b.lower() for b in o.backchannels), o.confirm_after_ms,
                                        o.resume_after_ms, o.resume_after_false_interruption)
        self._interruption: Interruption | None = None
        #: A false alarm's words may still end a "turn" in the recogniser: not one to answer.
        self._swallow_backchannel = False
        self._pending_audio: list[bytes] = []
        #: (caller audio ms, arrival time) of recent frames: dates the end of the caller's speech.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._pending_timing: TurnTiming | None = None
        self._barge_pending_at: int | None = None  # speech start awaiting min_speech_ms
        self._speculation: Speculation | None = None
        self._stt = None
        self._brain = None
        self._turn: BotTurn | None = None
        self._turn_numbers = itertools.count(1)
        self._silent_since: float | None = None
        self._reprompts = 0
        self._ending = False
        self._main: asyncio.Task | None = None
        self._group: asyncio.TaskGroup | None = None
        self._ready = loopbound.Event()
        self._closed = loopbound.Event()
        self._wake = loopbound.Event()
        #: Awaited before the greeting; returns the context the brain gets (ivr.outbound.amd:
        #: an outbound call waits for the answering-machine verdict). None: greet at once.
        self.before_greeting: Callable[[CallContext], Awaitable[CallContext]] | None = None
        self._awaiting_answer = False

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self.turns.state

    def _fire(self, event: Event) -> tuple[Action, ...]:
        before = self.turns.state
        actions = self.turns.fire(event)
        if self.turns.state is not before:
            self._emit({"type": "state", "state": self.turns.state.value})
            self._wake.set()
        return actions

    async def _act(self, event: Event, reason: str = "") -> None:
        """Fire an event and perform what the table answers."""
        turn = self._turn
        for action in self._fire(event):
            if turn is None:
                continue
            if action is Action.PAUSE:
                await self._pause(turn)
            elif action is Action.RESUME:
                self._resume(turn)
            elif action is Action.CANCEL:
                await self._cut(turn, reason or event.value)

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

    def on_mark(self, name: str) -> None:
        outcome = self.clock.echoed(name, self.time.now())
        if outcome != "unknown" and self._turn is not None:
            self._turn.notify()  # a wait for the turn to be heard looks again

    async def close(self, reason: str) -> None:
        self._closed.set()
        self._fire(Event.CLOSED)
        self._emit({"type": "ended", "reason": reason})
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        for closer in (self._stt, self._brain):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.aclose()

    async def on_caller_frames(self, frames: list[bytes]) -> None:
        if frames:
            self._arrivals.append((self.caller_ms + FRAME_MS * len(frames), monotonic()))
        for frame in frames:
            self.caller_ms += FRAME_MS
            if self._stt is not None and self._ready.is_set():
                await self._stt.send(frame)
            else:
                self._pending_audio.append(frame)
        if frames and self._barge_pending_at is not None:
            await self._check_pending_barge_in()

    # --- the call's own tasks -------------------------------------------------------------

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
                self._silent_since = None
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
                group.create_task(self._timers(), name="timers")
                await self._closed.wait()
                raise _CallOver  # leave the group, cancelling what is left
        except* _CallOver:
            pass
        except* Exception as errors:
            for exc in errors.exceptions:
                self.log.exception("call engine failed: %r", exc)

    async def _timers(self) -> None:
        while True:
            self._wake.clear()
            now = self.time.now()
            if self._interruption is not None:
                await self._judge(self._interruption.tick(self._caller_speaking(), now))
            if not (self._ending or self._awaiting_answer):
                if (now - self._started) * 1000 >= self.options.max_call_ms:
                    self.log.info("call reached its time limit (%d ms)", self.options.max_call_ms)
                    self._say_goodbye(self.options.time_limit_goodbye)
                else:
                    self._check_silence(now)
            await self.time.wait(self._wake, until=self._next_deadline(now))

    def _next_deadline(self, now: float) -> float:
        """When the timers must look again if nothing wakes them first (a state change, speech):
        often only while a verdict is pending or a silence is being timed from its start."""
        deadline = self._started + self.options.max_call_ms / 1000
        if self._interruption is not None:
            return min(deadline, now + TICK_S)
        if self.state is CallState.LISTENING:
            if self._silent_since is None:
                return min(deadline, now + TICK_S)
            return min(deadline, self._silent_since + self.options.reprompt_after_ms / 1000, now + 1.0)
        return deadline

    def _check_silence(self, now: float) -> None:
        if self.state is not CallState.LISTENING or self._caller_speaking(default=False):
            self._silent_since = None
            return
        if self._silent_since is None:
            self._silent_since = now
            return
        if (now - self._silent_since) * 1000 < self.options.reprompt_after_ms:
            return
        self._silent_since = None
        self._reprompts += 1
        if self._reprompts > self.options.max_reprompts:
            self.log.info("no answer after %d re-prompts", self.options.max_reprompts)
            self._say_goodbye(self.options.goodbye)
        elif self._brain is not None:
            self.log.info("caller silent for %d ms: re-prompt %d", self.options.reprompt_after_ms, self._reprompts)
            self._begin_turn(self._brain.respond(self._history(), CallerInput()))

    def _caller_speaking(self, default: bool = True) -> bool:
        return bool(getattr(self._stt, "speaking", default))

    def _arrival_of(self, at_ms: int) -> float | None:
        for ms, t in reversed(self._arrivals):
            if ms <= at_ms:
                return t
        return None

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
                self._expect_now()
                self._silent_since = None
                self._wake.set()
                if self.options.min_speech_ms and self.caller_ms - event.at_ms < self.options.min_speech_ms:
                    self._barge_pending_at = event.at_ms
                else:
                    await self._speech_over_bot(event.at_ms)
            elif isinstance(event, Final):
                turn_texts.append(event.text)
                if self._interruption is not None:
                    await self._judge(self._interruption.heard(event.text, False, self._caller_speaking(False), self.time.now()))
            elif isinstance(event, EagerEndOfTurn):
                self._speculate(event.text)
            elif isinstance(event, TurnResumed):
                self._drop_speculation()
            elif isinstance(event, EndOfTurn):
                self._barge_pending_at = None
                text = (event.text or " ".join(turn_texts)).strip()
                turn_texts.clear()
                self._pending_timing = TurnTiming(self._arrival_of(event.at_ms), monotonic())
                await self._end_of_caller_turn(text)

    def _expect_now(self) -> None:
        """Tell the recogniser what the caller is likely to say: asked afresh at each start of
        speech, since the brain (a flow's node) may have moved on with any bot turn, and the
        stretch that begins now is decoded only once it ends."""
        expected = getattr(self._brain, "expected", None)
        expect = getattr(self._stt, "expect", None)
        if expected is None or expect is None:
            return
        try:
            expect(expected())
        except Exception:
            self.log.exception("could not pass the expected phrases to the recogniser")

    async def _check_pending_barge_in(self) -> None:
        at_ms = self._barge_pending_at
        if at_ms is None or self.caller_ms - at_ms < self.options.min_speech_ms:
            return
        self._barge_pending_at = None
        if self._caller_speaking():
            await self._speech_over_bot(at_ms)
        else:
            self.log.debug("speech at %d ms was shorter than %d ms: no barge-in", at_ms, self.options.min_speech_ms)

    async def _end_of_caller_turn(self, text: str) -> None:
        interruption = self._interruption
        if interruption is not None:
            verdict = interruption.heard(text, True, False, self.time.now())
            await self._judge(verdict)
            if verdict is Verdict.RESUME:
                self._pending_timing = None
                self._swallow_backchannel = False
                return
        elif self._swallow_backchannel:
            self._swallow_backchannel = False
            if is_backchannel(text, self._rules.backchannels):
                self._pending_timing = None  # the murmur the bot already carried on over
                return
        if text:
            self._emit({"type": "caller", "text": text})
        if not text:
            self._pending_timing = None
            return
        self._reprompts = 0
        self.log.caller_said(text)
        await self._caller_input(CallerInput(text=text))

    async def _caller_input(self, caller: CallerInput) -> None:
        if self._brain is None or self._ending:
            return
        # The caller acts while the bot talks (keys, or barge-in off): the bot stops first.
        self._interruption = None
        await self._act(Event.CALLER_TURN, "caller input")
        history = self._history()
        speculation, self._speculation = self._speculation, None
        if caller.text:
            self.history.append(("caller", caller.text))
        elif caller.dtmf:
            self.history.append(("caller", f"[pressed {caller.dtmf}]"))
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

    # --- speech over the bot: pause, then resume or cut --------------------------------------

    async def _speech_over_bot(self, at_ms: int) -> None:
        if not self.options.barge_in or self._ending or self._turn is None or self._interruption is not None:
            return
        if self.state not in BOT_HAS_FLOOR:
            return
        arrived = self._arrival_of(at_ms)
        self._interruption = Interruption(self._rules, self.time.now())
        await self._act(Event.CALLER_SPEECH, "barge-in")
        metrics.observe_barge_in(arrived, monotonic())
        await self._judge(self._interruption.verdict if self._interruption else Verdict.WAIT)

    async def _judge(self, verdict: Verdict) -> None:
        if verdict is Verdict.WAIT or self._interruption is None:
            return
        self._interruption = None
        if verdict is Verdict.RESUME:
            self._swallow_backchannel = True
            await self._act(Event.FALSE_ALARM)
        else:
            await self._act(Event.INTERRUPTED, "barge-in")

    async def _pause(self, turn: BotTurn) -> None:
        """Go quiet now, keeping the turn: drop the carrier's queue and step back to the frame
        the caller was hearing, or (no clear) just stop feeding it."""
        turn.paused = True
        turn.notify()
        self.stats.pauses += 1
        now = self.time.now()
        if self.has_clear and self.options.pause == "clear" and self.clock.queued(now) > 0:
            await self.line.send_clear()
            turn.listen()
            cut = self.clock.cleared(now)
            if cut is not None and cut.owner == turn.number:
                turn.cursor = min(turn.cursor, cut.resume_pos)
                turn.ledger.heard(turn.cursor)
            # Marks of pieces not yet heard whole go out again as their frames do.
            pieces = turn.ledger.pieces
            turn.next_mark = next((i for i, p in enumerate(pieces) if not p.complete or p.end_frame > turn.cursor), len(pieces))
            turn.resumes += 1
        self.log.info("caller speech over the bot: paused turn %d at frame %d", turn.number, turn.cursor)

    def _resume(self, turn: BotTurn) -> None:
        self.stats.resumes += 1
        self.log.info("false alarm: turn %d goes on from frame %d", turn.number, turn.cursor)
        turn.paused = False
        turn.notify()

    async def _cut(self, turn: BotTurn, reason: str) -> None:
        """Give a turn up: no frame after this; the carrier drops what it queued; work is cancelled."""
        if not turn.gate_open:
            return
        turn.gate_open = False
        turn.paused = False
        turn.notify()
        now = self.time.now()
        turn.listen()
        if self.has_clear and turn.first_audio_at is not None and self.clock.queued(now) > 0:
            await self.line.send_clear()
            self.clock.cleared(now)
        turn.ledger.cut_short()
        turn.settle()
        if reason == "barge-in":
            self.stats.barge_ins += 1
            self.log.info("caller interrupted turn %d", turn.number)
        if self.listener is not None:
            self._emit(cut_event(turn, reason))
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()
        self.log.debug("turn %d cut (%s)", turn.number, reason)

    # --- bot turns ------------------------------------------------------------------------

    def _begin_turn(self, outputs: AsyncIterator[BrainOutput], greeting: bool = False) -> BotTurn:
        previous = self._turn
        if previous is not None:
            if previous.task is not None and not previous.task.done():
                previous.gate_open = False
                previous.notify()
                previous.task.cancel()
            previous.settle()
            previous.release()
        number = next(self._turn_numbers)
        turn = BotTurn(number, ear=lambda: self.clock.played(number, self.time.now()))
        self._turn = turn
        self._interruption = None
        self.history.append(("bot", turn))
        if self._pending_timing is not None:
            turn.timing, self._pending_timing = self._pending_timing, None
            self.stats.answers.append(turn.timing)
        if not greeting:
            self._fire(Event.BOT_TURN)
        assert self._group is not None
        turn.task = self._group.create_task(self._run_turn(turn, outputs), name=f"turn-{turn.number}")
        return turn

    async def _run_turn(self, turn: BotTurn, outputs: AsyncIterator[BrainOutput]) -> None:
        try:
            await self.speaker.speak(turn, outputs)
            if turn is self._turn and turn.gate_open:
                self._fire(Event.BOT_DONE)
            await self._run_tools(turn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_disconnect(exc):
                self.log.debug("the caller left while turn %d was speaking", turn.number)
                return
            # A broken provider costs this turn, not the call: the caller can still speak.
            self.log.exception("bot turn %d failed", turn.number)
            if turn is self._turn:
                self._fire(Event.BOT_DONE)
        finally:
            turn.done_generating = True

    def _first_audio(self, turn: BotTurn, _clock_now: float) -> None:
        now = monotonic()
        turn.first_audio_at = now
        self._fire(Event.BOT_AUDIO)
        if turn.number == 1:
            self.stats.greeting_first_audio_at = now
            self._emit({"type": "latency", "turn": 1, "greeting": True, "total_ms": round((now - self.stats.start_at) * 1000, 1)})
            metrics.GREETING_LATENCY.observe(now - self.stats.start_at)
        elif turn.timing is not None:
            turn.timing.first_audio_at = now
            self._emit(latency_event(turn.number, turn.timing))
            metrics.observe_answer(turn.timing)
