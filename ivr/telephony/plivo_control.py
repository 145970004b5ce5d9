"""Plivo's call control: hang-ups and transfers through the Voice API.

- hang up: `DELETE /v1/Account/{auth_id}/Call/{call_uuid}/`;
- transfer: `POST /v1/Account/{auth_id}/Call/{call_uuid}/` with the JSON body
  `{"legs": "aleg", "aleg_url": …, "aleg_method": "POST"}`: Plivo fetches `aleg_url` and runs the
  Plivo XML it returns instead of the stream. ivr serves that XML itself at
  `{IVR_PUBLIC_URL}/plivo/transfer?to=…&summary=…` (ivr.carrier_routes: a `<Dial>` to the
  target, built by `ivr.telephony.plivo.transfer`), signed by Plivo like the answer URL.

HTTP Basic authentication with PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN. `IVR_PLIVO_API_URL` replaces
`https://api.plivo.com` (a proxy, or a fake in tests). Transfers need `IVR_PUBLIC_URL` (Plivo
must reach the XML); without it they fail over to ending the stream, and hang-ups still work.

Checked against the official `plivo` Python SDK 4.63 (`resources/calls.py`: `delete` and
`update`/`transfer` on `('Call', call_uuid)`, `legs`/`aleg_url`/`aleg_method`; `rest/client.py`:
the base `https://api.plivo.com/v1/Account/{auth_id}/…/` with a trailing slash, JSON bodies,
Basic auth) and Plivo's `<Dial>` XML reference (`<Number>`, `<User>`, `sipHeaders` sent as
`X-PH-…`, values of letters, digits and `%`). Not confirmed against Plivo itself: whether the
stream's WebSocket is closed by Plivo when the A leg moves to new XML (the engine closes its side
either way).
"""

from __future__ import annotations

from typing import Mapping
from urllib.parse import urlencode

from ivr.telephony.control import ControlError, http_request, path_segment
from ivr.telephony.twiml import MAX_SUMMARY_CHARS

DEFAULT_API_URL = "https://api.plivo.com"
TRANSFER_PATH = "/plivo/transfer"


class PlivoControl:
    name = "Plivo Voice API"
    ends_stream_on_transfer = False

    def __init__(self, auth_id: str, auth_token: str, public_url: str = "", base_url: str = DEFAULT_API_URL) -> None:
        self.auth_id = auth_id
        self._auth = (auth_id, auth_token)
        self.public_url = public_url.rstrip("/")
        self.base_url = base_url.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "PlivoControl | None":
        auth_id, token = env.get("PLIVO_AUTH_ID", ""), env.get("PLIVO_AUTH_TOKEN", "")
        if not auth_id or not token:
            return None
        return cls(auth_id, token, env.get("IVR_PUBLIC_URL", ""), env.get("IVR_PLIVO_API_URL") or DEFAULT_API_URL)

    def _url(self, call_id: str) -> str:
        return f"{self.base_url}/v1/Account/{path_segment(self.auth_id)}/Call/{path_segment(call_id)}/"

    async def hang_up(self, call_id: str) -> None:
        await http_request(self.name, "DELETE", self._url(call_id), auth=self._auth)

    async def transfer(self, call_id: str, target: str, summary: str) -> None:
        if not self.public_url:
            raise ControlError(f"{self.name}: IVR_PUBLIC_URL is not set, so Plivo cannot fetch the transfer's XML")
        query = urlencode({"to": target, **({"summary": summary[:MAX_SUMMARY_CHARS]} if summary else {})})
        body = {"legs": "aleg", "aleg_url": f"{self.public_url}{TRANSFER_PATH}?{query}", "aleg_method": "POST"}
        await http_request(self.name, "POST", self._url(call_id), auth=self._auth, json=body)
