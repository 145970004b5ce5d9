"""Twilio's call control: hang-ups and transfers through the REST API (ivr.telephony.twilio_rest).

A hang-up updates the call with `Status=completed`; a transfer updates it with new TwiML
(`<Dial><Number>`, or `<Dial><Sip>` with the summary as an `X-Ivr-Summary` URI header), which
takes the call out of `<Connect><Stream>`: Twilio then ends the stream itself.

Without REST credentials there is no adapter, and the stream's end does the work: the answer
TwiML goes on to `<Redirect>/twiml/fallback`, which serves the transfer (or hang-up) the bot
decided (ivr.server). The same happens when the REST request fails.

Checked against twilio 9.13 (`calls(sid).update_async(twiml=…)` / `status="completed"`, the
request `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with form fields `Twiml` or
`Status`) and Twilio's TwiML `<Dial>` reference.
"""

from __future__ import annotations

from typing import Mapping

from ivr.telephony import twiml
from ivr.telephony.control import ControlError
from ivr.telephony.twilio_rest import TwilioRest, TwilioRestError


class TwilioControl:
    name = "Twilio REST"
    ends_stream_on_transfer = True

    def __init__(self, rest: TwilioRest) -> None:
        self.rest = rest

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "TwilioControl | None":
        rest = TwilioRest.from_env(env)
        return cls(rest) if rest is not None else None

    async def hang_up(self, call_id: str) -> None:
        try:
            await self.rest.hang_up(call_id)
        except TwilioRestError as exc:
            raise ControlError(str(exc)) from exc

    async def transfer(self, call_id: str, target: str, summary: str) -> None:
        try:
            await self.rest.update_twiml(call_id, twiml.transfer(target, summary))
        except TwilioRestError as exc:
            raise ControlError(str(exc)) from exc
