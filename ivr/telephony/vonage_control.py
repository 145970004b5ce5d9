"""Vonage Voice API call control: hang-ups and transfers with `PUT /v1/calls/{uuid}`.

- hang up: `{"action": "hangup"}`;
- transfer: `{"action": "transfer", "destination": {"type": "ncco", "ncco": [talk, connect]}}`
  where `connect` has a `phone` endpoint (`number` in E.164 without the "+") or a `sip` endpoint
  (`uri`, and the summary in `headers`, which Vonage sends as `X-Ivr-Summary`).

Authentication is an application JWT: RS256 with the application's private key, claims
`application_id`, `iat`, `exp` (15 minutes on) and a fresh `jti`, sent as `Authorization: Bearer`.
Configured with VONAGE_APPLICATION_ID and VONAGE_PRIVATE_KEY (the PEM text) or
VONAGE_PRIVATE_KEY_PATH; `IVR_VONAGE_API_URL` replaces `https://api.nexmo.com`. The call's uuid
is the one ivr's answer NCCO puts in the WebSocket's headers (`call_uuid`). A transfer takes the
caller out of the conversation the WebSocket is in: the engine then closes the WebSocket.

Checked against Vonage's `vonage-voice` 1.5 SDK (`voice.py`: `hangup` and `transfer_call_ncco`
are `PUT /v1/calls/{uuid}` on `api.nexmo.com` with those bodies; `models/connect_endpoints.py`:
`PhoneEndpoint.number`, `SipEndpoint.uri` and `headers`, sent with an `X-` prefix) and
`vonage-jwt` 1.1 (`generate_application_jwt`: the claims and RS256). Not confirmed against Vonage
itself: whether a `connect` to a phone without `from` shows the caller's number or "unknown" on
every route (Vonage's NCCO reference says a `from` that is not a Vonage number shows unknown).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Mapping

from ivr.telephony.control import ControlError, http_request, is_sip, path_segment
from ivr.telephony.twiml import MAX_SUMMARY_CHARS, TRANSFER_SAY

DEFAULT_API_URL = "https://api.nexmo.com"
JWT_LIFETIME_S = 15 * 60


class VonageControl:
    name = "Vonage Voice API"
    ends_stream_on_transfer = False

    def __init__(self, application_id: str, private_key: str, base_url: str = DEFAULT_API_URL) -> None:
        self.application_id = application_id
        self._private_key = private_key
        self.base_url = base_url.rstrip("/")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "VonageControl | None":
        app_id = env.get("VONAGE_APPLICATION_ID", "")
        key = env.get("VONAGE_PRIVATE_KEY", "")
        path = env.get("VONAGE_PRIVATE_KEY_PATH", "")
        if not key and path:
            try:
                key = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"VONAGE_PRIVATE_KEY_PATH: cannot read {path}: {exc.strerror}") from None
        if not app_id or not key:
            return None
        return cls(app_id, key.replace("\\n", "\n"), env.get("IVR_VONAGE_API_URL") or DEFAULT_API_URL)

    def _token(self) -> str:
        import jwt

        now = int(time.time())
        claims = {"application_id": self.application_id, "iat": now, "exp": now + JWT_LIFETIME_S, "jti": str(uuid.uuid4())}
        try:
            return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"typ": "JWT"})
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ControlError(f"{self.name}: the private key cannot sign a JWT ({type(exc).__name__})") from None

    async def _put(self, call_id: str, body: dict) -> None:
        headers = {"Authorization": f"Bearer {self._token()}"}
        await http_request(self.name, "PUT", f"{self.base_url}/v1/calls/{path_segment(call_id)}", headers=headers, json=body)

    async def hang_up(self, call_id: str) -> None:
        await self._put(call_id, {"action": "hangup"})

    async def transfer(self, call_id: str, target: str, summary: str) -> None:
        await self._put(call_id, {"action": "transfer", "destination": {"type": "ncco", "ncco": transfer_ncco(target, summary)}})


def transfer_ncco(target: str, summary: str = "") -> list[dict]:
    if is_sip(target):
        endpoint: dict = {"type": "sip", "uri": target}
        if summary:
            endpoint["headers"] = {"Ivr-Summary": summary[:MAX_SUMMARY_CHARS]}
    else:
        endpoint = {"type": "phone", "number": target.lstrip("+")}
    return [{"action": "talk", "text": TRANSFER_SAY}, {"action": "connect", "endpoint": [endpoint]}]
