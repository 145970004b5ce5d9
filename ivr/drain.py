"""Graceful drain: on SIGTERM (a deploy, a scale-down), finish the calls in progress, then exit.

uvicorn's own shutdown closes every open WebSocket at once with code 1012, which would cut each
caller off mid-sentence. `DrainingServer` therefore drains *before* handing over to it:

1. `/readyz` turns 503 (the load balancer stops sending new calls) and the voice webhook answers
   new calls with busy TwiML; `/healthz` stays 200 so the pod is not restarted meanwhile. A call
   whose webhook was answered just before still gets its stream (ivr.admission reservations).
2. Calls in progress go on, up to `IVR_DRAIN_SECONDS`.
3. At that deadline each remaining call is ended politely: the bot stops, says
   `IVR_DRAIN_GOODBYE` and hangs up once it has been heard (or transfers to
   `IVR_DRAIN_TRANSFER_TO`), within `GOODBYE_GRACE_SECONDS`.
4. uvicorn's shutdown then runs as usual (lifespan shutdown), and the process ends by the signal
   it was sent, which uvicorn re-raises once it is done: exit status 143 for SIGTERM (128 + 15,
   as a shell or a container runtime reports it), 130 for Ctrl-C. A supervisor thus sees a
   process that stopped because it was told to, as it would without the drain.

A second signal skips the rest of the wait and goes to step 3; a second Ctrl-C forces uvicorn out.
Kubernetes: terminationGracePeriodSeconds must cover the preStop delay + IVR_DRAIN_SECONDS +
GOODBYE_GRACE_SECONDS (see infra/k8s/deployment.yaml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import FrameType

import uvicorn

from ivr import metrics

log = logging.getLogger("ivr.drain")

#: Enough for the goodbye to be spoken and its mark echoed (CallOptions.goodbye_timeout_ms is
#: 15 s) and for a REST hang-up or transfer to answer.
GOODBYE_GRACE_SECONDS = 20.0


class Drain:
    """Drains one app's calls (`state` is its `ivr.state.IvrState`)."""

    def __init__(self, state, seconds: float, goodbye: str, transfer_to: str = "",
                 grace: float = GOODBYE_GRACE_SECONDS) -> None:
        self.state = state
        self.seconds = seconds
        self.goodbye = goodbye
        self.transfer_to = transfer_to
        self.grace = grace
        self._hurry = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_app(cls, app) -> "Drain":
        state = app.state.ivr
        s = state.settings
        return cls(state, s.drain_seconds, s.drain_goodbye, s.drain_transfer_to)

    def hurry(self) -> None:
        """Stop waiting for calls to end by themselves (safe from a signal handler)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._hurry.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        state = self.state
        state.admission.draining = True
        metrics.DRAINING.set(1)
        t0 = time.monotonic()
        log.info(
            "draining: /readyz is 503, new calls are answered busy; %d call(s) in progress may go on for %.0f s "
            "(signal again to end them now)",
            len(state.calls), self.seconds,
        )
        await self._wait_calls(self.seconds)
        if state.calls:
            handlers = list(state.handlers.values())
            log.warning("drain deadline: ending %d call(s) politely", len(handlers))
            await asyncio.gather(*(self._end(h) for h in handlers))
            self._hurry.clear()
            await self._wait_calls(self.grace)
        if state.calls:
            log.warning("%d call(s) still open after the goodbye; the server closes them", len(state.calls))
        log.info("drained in %.1f s", time.monotonic() - t0)

    async def _wait_calls(self, seconds: float) -> None:
        """Until every call has ended, `seconds` have passed, or `hurry()`."""
        deadline = time.monotonic() + seconds
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while self.state.calls and not hurry.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                # The stream tasks themselves: waiting on them neither polls nor cancels them.
                await asyncio.wait({*self.state.calls, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hurry

    async def _end(self, handler) -> None:
        metrics.DRAIN_ENDED.inc()
        try:
            drain = getattr(handler, "drain", None)
            if drain is not None:
                await drain(self.goodbye, self.transfer_to)
            else:  # a handler with nothing to say: close its stream
                await handler.line.hang_up()
        except Exception:
            log.exception("ending a call at the drain deadline failed; the server will close it")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with `Drain` run before its shutdown (which would close WebSockets)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.drain.hurry()
        else:
            # At once, not at uvicorn's next tick (0.1 s): no new call slips in. A plain flag is
            # all a signal handler may safely touch.
            self.drain.state.admission.draining = True
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets=None) -> None:
        # The listening sockets stay open meanwhile: /readyz and the webhooks keep answering.
        if not self.force_exit:
            await self.drain.run()
        await super().shutdown(sockets=sockets)
