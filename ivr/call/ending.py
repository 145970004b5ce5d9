"""How a call ends or moves on: the bot's tools (hang up, transfer, DTMF), the goodbye after
silence or the time limit, and the polite end when the server drains.

A mixin of `ivr.call.engine.Call`, kept apart so each reads at once: every step here runs after
the turn that asked for it has played out (by the playout clock), so a transfer or hang-up
follows the announcement as the caller heard it, marks or no marks.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, AsyncIterator

from ivr import metrics
from ivr.audio import FRAME_BYTES, Framer
from ivr.audio.dtmf import dtmf_ulaw
from ivr.call.turns import BOT_HAS_FLOOR, Event
from ivr.providers.base import BrainOutput, TextDelta, ToolCall
from ivr.session import Transfer
from ivr.telephony.control import ControlError, is_sip

if TYPE_CHECKING:
    from ivr.call.turn import BotTurn


class Endings:
    """Needs from the call: line, log, control, speaker, stats, state, _group, _turn, _ending,
    _emit(), _fire(), _cut(), _begin_turn()."""

    async def _run_tools(self, turn: BotTurn) -> None:
        for tool in turn.tools:
            self._emit({"type": "tool", "turn": turn.number, "name": tool.name, "arguments": dict(tool.arguments)})
            if tool.name == "hangup":
                await self._hang_up()
            elif tool.name == "transfer":
                await self._transfer(str(tool.arguments.get("to", "")), str(tool.arguments.get("summary", "")))
            elif tool.name == "send_dtmf":
                digits = str(tool.arguments.get("digits", ""))
                self.log.info("sending DTMF %s", self.log.private(digits))
                framer = Framer(FRAME_BYTES)
                await self.speaker.say_more(turn, framer.push(dtmf_ulaw(digits)) + framer.flush())
            else:
                self.log.info("custom tool %s(%s) requested; no handler is registered", tool.name, self.log.private(str(dict(tool.arguments))))

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
        if self._turn is not None and self.state in BOT_HAS_FLOOR:
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
        self._fire(Event.HANG_UP)
        self.stats.handed_over_at = monotonic()
        self.log.info("the bot ends the call")
        self.line.ended_by_bot = True
        if self.control is not None:
            try:
                await self.control.hang_up(self.line.control_id)
            except ControlError as exc:
                self.log.warning("%s; closing the stream instead", exc)
        await self.line.hang_up()

    async def _transfer(self, target: str, summary: str) -> None:
        if not target:
            self.log.warning("transfer requested without a target; ignored")
            return
        self._fire(Event.TRANSFER)
        self.stats.handed_over_at = monotonic()
        self._ending = True
        self.log.info("transferring the call to %s", self.log.mask(target))
        metrics.TRANSFERS.labels("sip" if is_sip(target) else "number").inc()
        # Kept on the line whatever happens next: if the stream ends without the carrier's call
        # control, what follows the stream may still carry it out (Twilio's /twiml/fallback).
        self.line.transfer_to = Transfer(target, summary)
        if self.control is not None:
            try:
                await self.control.transfer(self.line.control_id, target, summary)
            except ControlError as exc:
                self.log.warning("%s; ending the stream instead, and what follows it on the carrier's side "
                                 "takes the call", exc)
            else:
                if not self.control.ends_stream_on_transfer:
                    await self.line.leave()
                return
        # No call control, or it failed: end the stream without hanging up; the carrier's
        # answer document or dialplan goes on (on Twilio, /twiml/fallback serves this transfer).
        await self.line.leave()
