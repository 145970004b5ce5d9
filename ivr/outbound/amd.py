"""Twilio's async answering-machine verdict, handed to the call it is about.

The verdict (`AnsweredBy`: human, machine_end_beep, machine_end_silence, machine_end_other,
fax, unknown) arrives by webhook while the call's stream is already open, or even before it
opens. The call engine awaits `before_greeting(ctx)` before it says anything: an outbound call
with AMD waits here for its verdict, which then reaches the brain as the `AnsweredBy` parameter
(the flow says its voicemail message to a machine, its outbound greeting to a person).

The verdict goes through the shared state (ivr.fleet): with IVR_REDIS_URL the AMD webhook may
reach any pod; the pod that holds the stream hears it (published), or finds it kept if it asks
later.
"""

from __future__ import annotations

import logging

from ivr.fleet import SharedState
from ivr.fleet.memory import MemoryState
from ivr.providers.base import CallContext

log = logging.getLogger("ivr.outbound")

#: DetectMessageEnd gives up after MachineDetectionTimeout (30 s by default) with "unknown":
#: waiting a little longer covers the webhook's own delay.
DEFAULT_WAIT_S = 40.0


def is_machine(answered_by: str) -> bool:
    return answered_by.startswith("machine") or answered_by == "fax"


class AnswerBoard:
    def __init__(self, shared: SharedState | None = None, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.shared: SharedState = shared if shared is not None else MemoryState()
        self.wait_s = wait_s

    async def post(self, call_sid: str, answered_by: str) -> None:
        """A verdict arrived (on any pod)."""
        await self.shared.post_verdict(call_sid, answered_by)

    async def verdict(self, call_sid: str, timeout_s: float | None = None) -> str:
        answered_by = await self.shared.wait_verdict(call_sid, self.wait_s if timeout_s is None else timeout_s)
        if answered_by is None:
            log.warning("no answering-machine verdict for call %s: taking it as a person", call_sid)
            return "unknown"
        return answered_by

    async def before_greeting(self, ctx: CallContext) -> CallContext:
        """The context the brain gets: with `AnsweredBy` for outbound calls placed with AMD."""
        from ivr.outbound.place import P_AMD

        if ctx.parameters.get(P_AMD) != "1" or not ctx.call_sid:
            return ctx
        answered_by = await self.verdict(ctx.call_sid)
        log.info("call %s answered by %s", ctx.call_sid, answered_by)
        return CallContext(ctx.call_sid, ctx.stream_sid, {**ctx.parameters, "AnsweredBy": answered_by})
