"""What the process knows of each cloud provider: up, or down since a failure.

One `Health` per provider (Deepgram, OpenAI, a cloud voice), shared by every call. Calls report
what they see (`failed`, `succeeded`); the state changes are logged once each (not once per call,
frame or reconnect) and shown as `ivr_provider_up`. While a provider is down, one probe per
process (its cheapest request: a socket opened and closed, a model list) retries with growing
pauses, and the first success brings it back; calls never retry a dead provider one by one. A
provider without a probe (the request-per-piece voices) is tried again after a cool-off instead.

The stand-ins that use it are in ivr.providers.fallback (the recogniser, the brain) and
ivr.providers.elevenlabs (`FallbackTts`, the voices).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import Any, Awaitable, Callable, Sequence

from ivr import metrics

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
        #: Called when the provider goes down (a stand-in starts loading).
        self.on_down: list[Callable[[], None]] = []
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
            for hook in self.on_down:
                hook()
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
            self.reason = describe(exc)
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


def describe(exc: BaseException) -> str:
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
