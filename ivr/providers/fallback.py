"""When a cloud provider is down: one health record per provider, and the fallbacks that use it.

`Health` is what the process knows of one cloud provider (Deepgram, OpenAI, a cloud voice): up,
or down since a failure. Calls report what they see (`failed`, `succeeded`); the state changes
are logged once each (not once per call, frame or reconnect) and shown as `ivr_provider_up`.
While a provider is down, one probe per process (its cheapest request: a socket opened and
closed, a model list) retries with growing pauses, and the first success brings it back; calls
never retry a dead provider one by one. A provider without a probe (the request-per-piece
voices) is tried again after a cool-off instead.

The fallbacks, one per kind of provider, all built on `Health`:

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

Without a fallback installed a provider that is down makes the server not ready (`unready()`,
read by `/readyz`), so that a load balancer sends calls elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

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

log = logging.getLogger("ivr.providers")



def probe_delays(longest_s: float) -> tuple[float, ...]:
    """Pauses between probes of a provider that is down: 1 s (a blip), then doubling up to `longest_s`."""
    delays = [min(1.0, longest_s)]
    while delays[-1] < longest_s:
        delays.append(min(delays[-1] * 2, longest_s))
    return tuple(delays)


PROBE_DELAYS_S = probe_delays(30.0)
PROBE_TIMEOUT_S = 5.0
#: A provider with no sign of life for this long is probed when readiness is asked (and only
#: then: a busy server's calls are the evidence, an idle one is checked by its load balancer's
#: readiness polls, at most this often).
IDLE_CHECK_S = 60.0
#: Down again this soon after coming back (a probe that passes where calls fail): the probes go on
#: from the pause they had reached, so calls are not moved back and forth every second.
FLAP_WINDOW_S = 60.0
#: Handed-over audio goes to the embedded recogniser in Twilio's 20 ms frames, as it would have
#: come (its turn-taking reads the audio frame by frame: a second at once can end a turn at a
#: pause the caller then talked through), with the other calls let run after each second of it.
HANDOVER_FRAME = 160
HANDOVER_FRAMES_AT_ONCE = 50


class Health:
    """Up or down, for one cloud provider in this process."""

    def __init__(self, provider: str, name: str, probe: Callable[[], Awaitable[Any]] | None = None,
                 cooloff_s: float = 60.0) -> None:
        self.provider, self.name = provider, name
        self._probe = probe
        self.cooloff_s = cooloff_s
        self.probe_delays_s: Sequence[float] = PROBE_DELAYS_S
        #: What calls do meanwhile, for the log line, and how loud that line is: a warning when
        #: something stands in, an error when nothing does (the fallback sets both).
        self.while_down = "calls wait for it"
        self.down_level = logging.ERROR
        self.reason = ""
        self._down = False
        self._down_since = 0.0
        self._down_until = 0.0  # without a probe: the end of the cool-off
        self._up_since = float("-inf")
        self._attempt = 0  # probes so far (the pause before the next one grows with it)
        self._last_good = time.monotonic()
        self._task: asyncio.Task | None = None
        self._check_task: asyncio.Task | None = None
        self._waiters: list[asyncio.Future] = []
        metrics.PROVIDER_UP.labels(provider).set(1)

    @property
    def up(self) -> bool:
        """Worth trying now: not known down (or, without a probe, its cool-off is over)."""
        return not self._down or (self._probe is None and time.monotonic() >= self._down_until)

    def failed(self, reason: str) -> None:
        """A call could not reach the provider (or the probe could not)."""
        self.reason = reason
        if not self._down:
            self._down, self._down_since = True, time.monotonic()
            if self._down_since - self._up_since >= FLAP_WINDOW_S:
                self._attempt = 0
            metrics.PROVIDER_UP.labels(self.provider).set(0)
            if self._probe is None:
                log.log(self.down_level, "%s failed (%s): %s for the next %.0f s",
                        self.name, reason, self.while_down, self.cooloff_s)
            else:
                log.log(self.down_level, "%s cannot be reached (%s): %s until it answers again",
                        self.name, reason, self.while_down)
        if self._probe is None:
            self._down_until = time.monotonic() + self.cooloff_s
        else:
            self._start_probing()

    def succeeded(self) -> None:
        """A call (or the probe) reached the provider."""
        self._last_good = time.monotonic()
        if not self._down:
            return
        self._down, self._up_since = False, time.monotonic()
        metrics.PROVIDER_UP.labels(self.provider).set(1)
        log.warning("%s answers again after %.0f s: calls use it again", self.name, time.monotonic() - self._down_since)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_up(self) -> None:
        """Return once the provider is up (at once if it is)."""
        while not self.up:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            if self._probe is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._down_until - time.monotonic())):
                        await waiter
            else:
                await waiter

    def check(self) -> None:
        """Probe an idle provider now and then (called by readiness checks; never blocks)."""
        if not self._down and self._probe is not None and time.monotonic() - self._last_good >= IDLE_CHECK_S:
            self._last_good = time.monotonic()  # one check at a time
            self._check_task = self._spawn(self._check_once())

    async def aclose(self) -> None:
        for task in (self._task, self._check_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._check_task = None

    def stand_in(self, what: str | None, otherwise: str) -> None:
        """Say what takes over while the provider is down (`what`), or, with nothing, what happens."""
        self.while_down = what or otherwise
        self.down_level = logging.WARNING if what else logging.ERROR

    # --- the probe ---------------------------------------------------------------------------

    def _start_probing(self) -> None:
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = self._spawn(self._probe_until_up())

    def _spawn(self, coro) -> asyncio.Task:
        # A fresh context: the probe belongs to no call, so its log lines carry no call's ids.
        return asyncio.get_running_loop().create_task(coro, name=f"probe-{self.provider}", context=contextvars.Context())

    async def _probe_once(self) -> bool:
        assert self._probe is not None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self._probe()
        except Exception as exc:  # any failure only means "still down"
            self.reason = _describe(exc)
            log.debug("%s probe failed: %s", self.name, self.reason)
            return False
        return True

    async def _probe_until_up(self) -> None:
        while self._down:
            await asyncio.sleep(self.probe_delays_s[min(self._attempt, len(self.probe_delays_s) - 1)])
            self._attempt += 1
            if self._down and await self._probe_once():
                self.succeeded()

    async def _check_once(self) -> None:
        if await self._probe_once():
            self.succeeded()
        else:
            self.failed(self.reason)


def _describe(exc: BaseException) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None) or getattr(exc, "status", None)
    if status:
        return f"HTTP {status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def unready(health: Health, has_fallback: bool, what: str) -> str | None:
    """Why the server should not take calls because of this provider, or None."""
    health.check()
    if health.up or has_fallback:
        return None
    return f"{health.name} cannot be reached ({health.reason}) and no {what} is installed to stand in"


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

    def __init__(self, primary: Any, backup: Callable[[], SpeechToText] | None) -> None:
        self.primary = primary
        self.health: Health = primary.health
        self._backup_factory = backup
        self._backup: SpeechToText | None = None
        self.health.stand_in("calls use the embedded recogniser" if backup is not None else None,
                             "calls cannot be understood and /readyz reports not ready")

    @property
    def has_backup(self) -> bool:
        return self._backup_factory is not None

    @property
    def backup(self) -> SpeechToText:
        if self._backup is None:
            assert self._backup_factory is not None
            self._backup = self._backup_factory()
        return self._backup

    async def load(self) -> None:
        await self.primary.load()
        if self.has_backup:
            await self.backup.load()  # ready before it is needed: a call cannot wait for a model

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
        self._events: asyncio.Queue = asyncio.Queue()
        self._closed = False
        self._returning: asyncio.Task | None = None

    async def start(self) -> None:
        if self.owner.health.up:
            self._attach(await self._open_primary(0))
        else:
            self._attach(_Leg(await self.owner.backup.open(self.call), 0, True))
            self._on_backup()

    @property
    def speaking(self) -> bool:
        return getattr(self.leg.session, "speaking", True) if self.leg is not None else False

    @property
    def on_backup(self) -> bool:
        return self.leg is not None and self.leg.backup

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
            session = await self.owner.backup.open(self.call)
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
                     self.call.call_sid, self.owner.health.name, _describe(exc))
            self.owner.health.failed(_describe(exc))
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
