"""How an Asterisk call goes on after the bot's stream ends, for a dialplan without ARI.

Ending an AudioSocket (or WebSocket channel) stream tells the dialplan only that the stream is
over, not whether the bot hung up or transferred, nor to whom. So, as Twilio's `/twiml/fallback`
does for Twilio, the server keeps the call's outcome for a moment and the dialplan asks for it
with `CURL()`: `GET /asterisk/outcome/{call id}` answers a URL-encoded form that func_curl's
`hashcompat` option reads into a HASH (`action=transfer&to=%2B15550100123&summary=...`,
`action=hangup`, or `action=none` when the bot did not end the call). The call id is the one
the stream named: the AudioSocket UUID, or the WebSocket channel's `IVR_CHANNEL`.
"""

from __future__ import annotations

from urllib.parse import urlencode

PATH = "/asterisk/outcome/{call_id}"
NONE = "action=none"


def outcome_key(call_id: str) -> str:
    """The shared-state key of a call's outcome (apart from Twilio's CallSids)."""
    return "asterisk:" + call_id


def outcome(transfer_to: tuple[str, str] | None, ended_by_bot: bool) -> str | None:
    """The form the dialplan reads, or None when the bot neither transferred nor hung up."""
    if transfer_to is not None:
        target, summary = transfer_to
        return urlencode({"action": "transfer", "to": target, "summary": summary})
    return "action=hangup" if ended_by_bot else None
