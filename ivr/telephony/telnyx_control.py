"""Telnyx Call Control v2: hang-ups and transfers of a call whose media streams to ivr.

- hang up: `POST /v2/calls/{call_control_id}/actions/hangup` with `{}`;
- transfer: `POST /v2/calls/{call_control_id}/actions/transfer` with `{"to": target}` (an E.164
  number or a SIP URI) and, when there is a summary, `custom_headers: [{"name": "X-Ivr-Summary",
  "value": …}]` on the new leg's INVITE.

Authentication is `Authorization: Bearer TELNYX_API_KEY`. The call_control_id is the one the
stream's `start` message carries (`start.call_control_id`), which the Telnyx codec makes the
call's id. `IVR_TELNYX_API_URL` replaces `https://api.telnyx.com/v2` (a proxy, or a fake in tests).

A transfer bridges the caller to the new leg; the media fork to ivr is not ended by it, so the
engine closes its side of the stream once Telnyx has accepted the transfer.

Checked against the official `telnyx` Python SDK 4.189 (`resources/calls/actions.py`: the two
paths, `ActionTransferParams.to` and `custom_headers` of `{name, value}`, the Bearer key, the
default base URL and its path quoting) and Telnyx's "Stream call media over WebSocket" reference
(`start.call_control_id`). Not confirmed against Telnyx itself (not reachable here): that Call
Control commands are accepted on a call answered by TeXML (ivr's `/telnyx/texml`) rather than
by a Call Control application; Telnyx documents both as using the same call_control_id.
"""

from __future__ import annotations

from typing import Mapping

from ivr.telephony.control import http_request, path_segment
from ivr.telephony.twiml import MAX_SUMMARY_CHARS, SUMMARY_HEADER

DEFAULT_API_URL = "https://api.telnyx.com/v2"


class TelnyxControl:
    name = "Telnyx Call Control"
    ends_stream_on_transfer = False

    def __init__(self, api_key: str, base_url: str = DEFAULT_API_URL) -> None:
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self.base_url = base_url.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "TelnyxControl | None":
        key = env.get("TELNYX_API_KEY", "")
        return cls(key, env.get("IVR_TELNYX_API_URL") or DEFAULT_API_URL) if key else None

    def _url(self, call_id: str, action: str) -> str:
        return f"{self.base_url}/calls/{path_segment(call_id)}/actions/{action}"

    async def hang_up(self, call_id: str) -> None:
        await http_request(self.name, "POST", self._url(call_id, "hangup"), headers=self._headers, json={})

    async def transfer(self, call_id: str, target: str, summary: str) -> None:
        await http_request(self.name, "POST", self._url(call_id, "transfer"), headers=self._headers,
                           json=transfer_body(target, summary))


def transfer_body(target: str, summary: str) -> dict:
    body: dict = {"to": target}
    if summary:
        body["custom_headers"] = [{"name": SUMMARY_HEADER, "value": summary[:MAX_SUMMARY_CHARS]}]
    return body
