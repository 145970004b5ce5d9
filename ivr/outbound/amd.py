"""Twilio's async answering-machine verdict, handed to the call it is about.

The verdict (`AnsweredBy`: human, machine_end_beep, machine_end_silence, machine_end_other,
fax, unknown) arrives by webhook while the call's stream is already open, or even before it
opens. The call engine awaits `before_greeting(ctx)` before it says anything: an outbound call
with AMD waits here for its verdict, which then reaches the brain as the `AnsweredBy` parameter
(the flow says its voicemail message to a machine, its outbound greeting to a person).

The board is per process: the AMD webhook must reach the replica that holds the stream (one
server, or sticky routing on CallSid).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from ivr.providers.base import CallContext

log = logging.getLogger("ivr.outbound")

#: DetectMessageEnd gives up after MachineDetectionTimeout (30 s by default) with "unknown":
#: waiting a little longer covers the webhook's own delay.
DEFAULT_WAIT_S = 40.0
MAX_KEPT = 10_000


def is_machine(answered_by: str) -> bool:
    return answered_by.startswith("machine") or answered_by == "fax"


class AnswerBoard:
    def __init__(self, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.wait_s = wait_s
        self._verdicts: OrderedDict[str, str] = OrderedDict()
        self._waiters: dict[str, asyncio.Future] = {}

    def post(self, call_sid: str, answered_by: str) -> None:
        """A verdict arrived (on the event loop of the server)."""
        self._verdicts[call_sid] = answered_by
        while len(self._verdicts) > MAX_KEPT:
            self._verdicts.popitem(last=False)
        waiter = self._waiters.pop(call_sid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(answered_by)

    async def verdict(self, call_sid: str, timeout_s: float | None = None) -> str:
        if call_sid in self._verdicts:
            return self._verdicts.pop(call_sid)
        waiter = self._waiters.setdefault(call_sid, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(self.wait_s if timeout_s is None else timeout_s):
                return await asyncio.shield(waiter)
        except TimeoutError:
            log.warning("no answering-machine verdict for call %s: taking it as a person", call_sid)
            return "unknown"
        finally:
            self._waiters.pop(call_sid, None)
            self._verdicts.pop(call_sid, None)

    async def before_greeting(self, ctx: CallContext) -> CallContext:
        """The context the brain gets: with `AnsweredBy` for outbound calls placed with AMD."""
        from ivr.outbound.place import P_AMD

        if ctx.parameters.get(P_AMD) != "1" or not ctx.call_sid:
            return ctx
        answered_by = await self.verdict(ctx.call_sid)
        log.info("call %s answered by %s", ctx.call_sid, answered_by)
        return CallContext(ctx.call_sid, ctx.stream_sid, {**ctx.parameters, "AnsweredBy": answered_by})
