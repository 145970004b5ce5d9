"""Stand-ins for a cloud provider that is down, built on its `Health` (ivr.providers.health).

- speech-to-text (`FallbackStt`): the embedded recogniser takes a call over when the cloud one
  cannot be reached, and gives it back at the next pause between the caller's turns once the
  cloud answers again. Nothing the caller said is lost on the way: the cloud session keeps the
  audio it has not settled into a final result (everything since the last one, including what
  arrived while the connection failed) and hands it to the embedded recogniser, whose times are
  moved onto the call's clock; the words already settled in the turn in progress are kept and
  joined to the rest of the turn. Going back happens only between turns, so no audio is in
  flight then.
- the brain (`FallbackBrain`): when the LLM cannot answer before its first word, the caller
  hears a short apology and the call flow answers the same input, and the rest of the call (a
  flow's state cannot be handed back to a model mid-way). Calls that start while the LLM is
  down start on the flow, greeting included.
- text-to-speech: `ivr.providers.elevenlabs.FallbackTts` (the embedded voice finishes a turn)
  keeps its state in a `Health` too.

Without a stand-in installed a provider that is down makes the server not ready (`unready()`,
read by `/readyz`), so that a load balancer sends calls elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, AsyncIterator, Callable, Sequence

from ivr import loopbound
from ivr import metrics
from ivr.providers import cloud
from ivr.providers.base import (
    Brain,
    BrainOutput,
    CallContext,
    CallerInput,
    EagerEndOfTurn,
    EndOfTurn,
    Final,
    SpeechStarted,
    SpeechToText,
    SttEvent,
    TextDelta,
    Turn,
)
from ivr.providers.health import Health, describe, unready
from ivr.providers.standin import StandIn

log = logging.getLogger("ivr.providers")

#: Handed-over audio goes to the embedded recogniser in Twilio's 20 ms frames, as it would have
#: come (its turn-taking reads the audio frame by frame: a second at once can end a turn at a
#: pause the caller then talked through), with the other calls let run after each second of it.
HANDOVER_FRAME = 160
HANDOVER_FRAMES_AT_ONCE = 50


# --- speech-to-text --------------------------------------------------------------------------------


def shifted(event: SttEvent, ms: int) -> SttEvent:
    """`event` with its times moved `ms` later (a session that started mid-call, onto the call's clock)."""
    if not ms:
        return event
    changes: dict[str, Any] = {}
    for name in ("at_ms", "start_ms", "end_ms"):
        if hasattr(event, name):
            changes[name] = getattr(event, name) + ms
    if isinstance(event, Final) and event.words:
        changes["words"] = tuple(dataclasses.replace(w, start_ms=w.start_ms + ms, end_ms=w.end_ms + ms) for w in event.words)
    return dataclasses.replace(event, **changes)


class FallbackStt:
    """A cloud recogniser with `health` whose sessions can hand a call over (`fallback_ready`,
    `unsettled()`, iteration raising `cloud.Unreachable`); the embedded one stands in."""

    def __init__(self, primary: Any, backup: Callable[[], SpeechToText] | None, preload: bool = False) -> None:
        self.primary = primary
        self.health: Health = primary.health
        self.stand_in: StandIn[SpeechToText] = StandIn("the embedded recogniser", backup, preload=preload)
        self.health.on_down.append(self.stand_in.start_loading)
        self.health.stand_in("calls use the embedded recogniser" if backup is not None else None,
                             "calls cannot be understood and /readyz reports not ready")

    @property
    def has_backup(self) -> bool:
        return self.stand_in.available

    async def load(self) -> None:
        await self.primary.load()
        if self.has_backup and self.stand_in.preload:
            await self.stand_in.ready()

    async def open(self, call: CallContext | None = None) -> Any:
        call = call or CallContext()
        if not self.has_backup:
            return await self.primary.open(call)
        session = SwitchingSttSession(self, call)
        await session.start()
        return session

    def unready(self) -> str | None:
        return unready(self.health, self.has_backup, "embedded recogniser")

    async def aclose(self) -> None:
        await self.health.aclose()


@dataclasses.dataclass(eq=False)
class _Leg:
    """One recogniser session serving the call, from `zero_ms` on the call's clock."""

    session: Any
    zero_ms: int
    backup: bool
    pump: asyncio.Task | None = None


_END = object()


class SwitchingSttSession:
    """One call's recogniser: the cloud session, or the embedded one while the cloud is down."""

    def __init__(self, owner: FallbackStt, call: CallContext) -> None:
        self.owner = owner
        self.call = call
        self.leg: _Leg | None = None
        self._fed = 0  # caller audio received, bytes (= samples: 8 kHz mu-law)
        self._held: list[bytes] | None = None  # audio that arrives while the call changes session
        self._turn_finals: list[str] = []  # Final texts since the last EndOfTurn, from any session
        self._carry: list[str] = []  # those of them from sessions before the current one
        self._in_turn = False
        self._events: asyncio.Queue = loopbound.Queue()
        self._closed = False
        self._returning: asyncio.Task | None = None

    async def start(self) -> None:
        if self.owner.health.up:
            self._attach(await self._open_primary(0))
        else:
            backup = await self.owner.stand_in.ready()
            self._attach(_Leg(await backup.open(self.call), 0, True))
            self._on_backup()

    @property
    def speaking(self) -> bool:
        return getattr(self.leg.session, "speaking", True) if self.leg is not None else False

    @property
    def on_backup(self) -> bool:
        return self.leg is not None and self.leg.backup

    def expect(self, phrases) -> None:
        expect = getattr(self.leg.session, "expect", None) if self.leg is not None else None
        if expect is not None:
            expect(phrases)

    # --- SttSession ----------------------------------------------------------------------------

    async def send(self, ulaw: bytes) -> None:
        self._fed += len(ulaw)
        if self._held is not None:
            self._held.append(ulaw)
            return
        leg = self.leg
        if leg is None:
            return  # closed
        if leg.backup and not self._in_turn and self.owner.health.up and not getattr(leg.session, "speaking", False):
            # From this frame on the audio is held for the cloud session, opened off the frame
            # path (it may wait for a stream slot).
            self._held = [ulaw]
            zero_ms = (self._fed - len(ulaw)) // 8
            self._returning = asyncio.create_task(self._back_to_cloud(zero_ms), name="stt-back-to-cloud")
            return
        await leg.session.send(ulaw)

    async def finalize(self) -> None:
        if self.leg is not None:
            await self.leg.session.finalize()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._returning is not None and not self._returning.done():
            self._returning.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._returning
        leg, self.leg = self.leg, None
        if leg is not None:
            if leg.backup:
                metrics.CALLS_ON_FALLBACK.labels(self.owner.health.provider).dec()
            await self._close_leg(leg)
        self._events.put_nowait(_END)

    def __aiter__(self) -> AsyncIterator[SttEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[SttEvent]:
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)
                return
            yield item

    # --- sessions --------------------------------------------------------------------------------

    async def _open_primary(self, zero_ms: int) -> _Leg:
        session = await self.owner.primary.open(self.call)
        session.fallback_ready = True  # give up on an unreachable provider rather than retry it
        return _Leg(session, zero_ms, False)

    def _attach(self, leg: _Leg) -> None:
        self.leg = leg
        leg.pump = asyncio.create_task(self._pump(leg), name=f"stt-{'backup' if leg.backup else 'cloud'}")

    def _on_backup(self) -> None:
        metrics.CALLS_ON_FALLBACK.labels(self.owner.health.provider).inc()
        cloud.fallback(self.owner.health.provider)

    async def _close_leg(self, leg: _Leg) -> None:
        with contextlib.suppress(Exception):
            await leg.session.aclose()
        if leg.pump is not None and leg.pump is not asyncio.current_task():
            leg.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await leg.pump

    async def _pump(self, leg: _Leg) -> None:
        try:
            async for event in leg.session:
                self._deliver(shifted(event, leg.zero_ms))
        except cloud.Unreachable as exc:
            if leg is self.leg and not self._closed:
                await self._to_backup(leg, str(exc))
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("[%s] speech-to-text session failed", self.call.call_sid)
            if leg is self.leg and not leg.backup and not self._closed:
                await self._to_backup(leg, f"{self.owner.health.name} failed")
                return
        if leg is self.leg and not self._closed:
            self._events.put_nowait(_END)  # the session ended on its own: so does the call's

    def _deliver(self, event: SttEvent) -> None:
        if isinstance(event, SpeechStarted):
            self._in_turn = True
        elif isinstance(event, Final):
            self._turn_finals.append(event.text)
        elif isinstance(event, (EndOfTurn, EagerEndOfTurn)) and self._carry:
            # Words settled by the session before this one belong to the same turn.
            event = dataclasses.replace(event, text=" ".join([*self._carry, event.text]).strip())
        if isinstance(event, EndOfTurn):
            self._in_turn = False
            self._turn_finals.clear()
            self._carry.clear()
        self._events.put_nowait(event)

    async def _to_backup(self, leg: _Leg, reason: str) -> None:
        """The cloud session gave up: the embedded recogniser takes over from the unsettled audio."""
        held = self._held = []
        position_ms, audio = leg.session.unsettled()
        zero_ms = leg.zero_ms + position_ms
        self._carry = list(self._turn_finals)
        try:
            session = await (await self.owner.stand_in.ready()).open(self.call)
        except Exception:
            log.exception("[%s] the embedded recogniser could not be opened: the call cannot be understood", self.call.call_sid)
            self._held = None
            self._events.put_nowait(_END)
            return
        backup = _Leg(session, zero_ms, True)
        log.info("[%s] %s: the embedded recogniser takes over from %d ms (%d ms of audio handed over)",
                 self.call.call_sid, reason, zero_ms, len(audio) // 8)
        try:
            for n, i in enumerate(range(0, len(audio), HANDOVER_FRAME), 1):
                await session.send(audio[i:i + HANDOVER_FRAME])
                if n % HANDOVER_FRAMES_AT_ONCE == 0:
                    await asyncio.sleep(0)  # a long hand-over must not hold up the other calls
            if await self._drain_into(held, backup):
                self._on_backup()
        except asyncio.CancelledError:  # the call ended during the hand-over
            with contextlib.suppress(Exception):
                await session.aclose()
            raise
        await self._close_leg(leg)

    async def _back_to_cloud(self, zero_ms: int) -> None:
        """Between turns, with the cloud up again: the rest of the call goes back to it."""
        old, held = self.leg, self._held
        try:
            leg = await self._open_primary(zero_ms)
        except Exception as exc:
            log.info("[%s] %s not reopened (%s): staying on the embedded recogniser",
                     self.call.call_sid, self.owner.health.name, describe(exc))
            self.owner.health.failed(describe(exc))
            await self._drain_into(held, old)
            return
        log.info("[%s] %s is back: the call returns to it at %d ms", self.call.call_sid, self.owner.health.name, zero_ms)
        try:
            if await self._drain_into(held, leg):
                metrics.CALLS_ON_FALLBACK.labels(self.owner.health.provider).dec()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await leg.session.aclose()
            raise
        await self._close_leg(old)

    async def _drain_into(self, held: list[bytes], leg: _Leg) -> bool:
        """Send what was held back to `leg`, then let `send()` go to it directly; False (and
        `leg` closed) if the call ended meanwhile."""
        i = 0
        while i < len(held):  # more may arrive while a send awaits: it is sent in order too
            await leg.session.send(held[i])
            i += 1
        # No await since the loop's last check: nothing is left behind.
        self._held = None
        if self._closed:
            if leg is not self.leg:
                with contextlib.suppress(Exception):
                    await leg.session.aclose()
            return False
        if leg is not self.leg:
            self._attach(leg)
        return True


# --- the brain -------------------------------------------------------------------------------------


class FallbackBrain:
    """An LLM brain with `health` whose sessions offer `answer()` (raising `cloud.Unreachable`
    when no word came); the call flow stands in."""

    def __init__(self, primary: Any, backup: Brain | None, apology: str) -> None:
        self.primary = primary
        self.backup = backup
        self.health: Health = primary.health
        self.apology = apology
        self.health.stand_in("calls go on with the call flow" if backup is not None else None,
                             "callers hear the fallback line and /readyz reports not ready")

    async def load(self) -> None:
        await self.primary.load()
        if self.backup is not None:
            await self.backup.load()

    async def open(self, call: CallContext) -> Any:
        session = await self.primary.open(call)
        if self.backup is None:
            return session
        return FallbackBrainSession(self, session, call)

    def unready(self) -> str | None:
        return unready(self.health, self.backup is not None, "call flow that answers callers")

    async def aclose(self) -> None:
        await self.health.aclose()


class FallbackBrainSession:
    def __init__(self, owner: FallbackBrain, primary: Any, call: CallContext) -> None:
        self.owner = owner
        self.primary = primary
        self.call = call
        self.flow: Any = None
        self._counted = False
        #: On the flow for the rest of the call (set at the start if the LLM is down then).
        self.on_flow = not owner.health.up

    @property
    def speculative(self) -> bool:
        # A reply started early and then dropped must not have moved the flow on.
        return not self.on_flow and self.owner.health.up and getattr(self.primary, "speculative", False)

    async def greeting(self) -> AsyncIterator[BrainOutput]:
        if self.on_flow:
            flow = await self._to_flow("it was down when the call began")
            async for out in flow.greeting():
                yield out
            return
        async for out in self.primary.greeting():
            yield out

    async def respond(self, history: Sequence[Turn], caller: CallerInput) -> AsyncIterator[BrainOutput]:
        reason = "it was down when the call began"
        if not self.on_flow:
            reason = "it is down"
            if self.owner.health.up:
                try:
                    async for out in self.primary.answer(history, caller):
                        yield out
                    return
                except cloud.Unreachable as exc:
                    reason = str(exc)
            yield TextDelta(self.owner.apology.strip() + " ")
        flow = await self._to_flow(reason)
        async for out in flow.respond(history, caller):
            yield out

    async def _to_flow(self, reason: str) -> Any:
        if self.flow is None:
            self.flow = await self.owner.backup.open(self.call)
            self.on_flow = True
            # A session with no call (the greeting rendered at start-up) is not counted.
            self._counted = bool(self.call.call_sid)
            if self._counted:
                metrics.CALLS_ON_FALLBACK.labels(self.owner.health.provider).inc()
                cloud.fallback(self.owner.health.provider)
                log.info("[%s] %s cannot answer (%s): the call flow answers for the rest of the call",
                         self.call.call_sid, self.owner.health.name, reason)
        return self.flow

    async def aclose(self) -> None:
        if self.flow is not None:
            if self._counted:
                metrics.CALLS_ON_FALLBACK.labels(self.owner.health.provider).dec()
            with contextlib.suppress(Exception):
                await self.flow.aclose()
        await self.primary.aclose()
