"""Asterisk's call control through ARI (the Asterisk REST Interface), for both Asterisk lines.

- hang up: `DELETE /ari/channels/{id}`, which Asterisk carries out on any channel;
- transfer: `POST /ari/channels/{id}/variable` (`IVR_TRANSFER_TO`, and `IVR_TRANSFER_SUMMARY`
  when there is one), then `POST /ari/channels/{id}/continue?context=…&extension=s&priority=1`:
  the caller goes on in the dialplan context `IVR_ASTERISK_TRANSFER_CONTEXT` (default
  `ivr-transfer`), which dials `${IVR_TRANSFER_TO}` (example in infra/asterisk/extensions.conf).

Asterisk accepts `continue` and setting a variable only for a channel inside a Stasis
application (otherwise 409 "Channel not in Stasis application"); hanging up and reading a
variable work on any channel. So with a plain dialplan (`AudioSocket()` or `Dial(WebSocket/…)`
straight from extensions.conf) a transfer through ARI is refused, the adapter raises
`ControlError`, and the engine ends the socket: the dialplan goes on after `AudioSocket()` /
`Dial()`. Hang-ups work either way.

Which channel: the id the stream names is tried first (chan_websocket's `MEDIA_START` names the
WebSocket channel, or the caller's when the dialplan passes `__IVR_CHANNEL=${UNIQUEID}`, which
ivr prefers). An AudioSocket call names only its UUID: the adapter lists the channels
(`GET /ari/channels`) and reads each one's `IVR_CALL_ID` (`GET /ari/channels/{id}/variable`),
which the dialplan sets to the same UUID it gives `AudioSocket()`.

Configuration: `IVR_ASTERISK_ARI_URL` (e.g. `http://127.0.0.1:8088/ari`) and
`IVR_ASTERISK_ARI_AUTH=user:password` (an `ari.conf` user; HTTP Basic).

Checked against Asterisk's ARI reference for Channels (docs.asterisk.org: hangup, continue,
variable, list) and `res/ari/resource_channels.c` on Asterisk's main branch (which requests
need Stasis, and their status codes). Not confirmed against a running Asterisk. AMI, whose
`Redirect` and `Setvar` act on channels outside Stasis, is not built.
"""

from __future__ import annotations

from typing import Mapping

import orjson

from ivr.telephony.control import ControlError, http_request, path_segment
from ivr.telephony.twiml import MAX_SUMMARY_CHARS

#: The channel variable an AudioSocket dialplan sets to the call's UUID.
CALL_ID_VARIABLE = "IVR_CALL_ID"
TRANSFER_TO_VARIABLE = "IVR_TRANSFER_TO"
SUMMARY_VARIABLE = "IVR_TRANSFER_SUMMARY"
DEFAULT_TRANSFER_CONTEXT = "ivr-transfer"


class AsteriskAri:
    name = "Asterisk ARI"
    ends_stream_on_transfer = False

    def __init__(self, base_url: str, user: str, password: str, transfer_context: str = DEFAULT_TRANSFER_CONTEXT) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = (user, password)
        self.transfer_context = transfer_context

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "AsteriskAri | None":
        url, auth = env.get("IVR_ASTERISK_ARI_URL", ""), env.get("IVR_ASTERISK_ARI_AUTH", "")
        if not url or not auth:
            return None
        user, sep, password = auth.partition(":")
        if not sep or not user:
            raise ValueError("IVR_ASTERISK_ARI_AUTH must be user:password")
        return cls(url, user, password, env.get("IVR_ASTERISK_TRANSFER_CONTEXT") or DEFAULT_TRANSFER_CONTEXT)

    async def _request(self, method: str, path: str, params: Mapping[str, str] | None = None) -> bytes:
        return await http_request(self.name, method, self.base_url + path, auth=self._auth, params=params)

    async def channel(self, call_id: str) -> str:
        """The id of the channel this call is: `call_id` itself, or the channel whose
        IVR_CALL_ID is `call_id`."""
        try:
            channels = orjson.loads(await self._request("GET", "/channels"))
        except orjson.JSONDecodeError:
            raise ControlError(f"{self.name}: GET /channels did not answer JSON") from None
        ids = [str(c.get("id", "")) for c in channels if isinstance(c, dict)]
        if call_id in ids:
            return call_id
        for channel_id in ids:
            try:
                body = await self._request("GET", f"/channels/{path_segment(channel_id)}/variable",
                                           {"variable": CALL_ID_VARIABLE})
            except ControlError:  # 404: the variable is not set on that channel
                continue
            if _value(body) == call_id:
                return channel_id
        raise ControlError(f"{self.name}: no channel is this call (none has {CALL_ID_VARIABLE} set to it)")

    async def hang_up(self, call_id: str) -> None:
        channel = await self.channel(call_id)
        await self._request("DELETE", f"/channels/{path_segment(channel)}")

    async def transfer(self, call_id: str, target: str, summary: str) -> None:
        channel = path_segment(await self.channel(call_id))
        await self._request("POST", f"/channels/{channel}/variable", {"variable": TRANSFER_TO_VARIABLE, "value": target})
        if summary:
            await self._request("POST", f"/channels/{channel}/variable",
                                {"variable": SUMMARY_VARIABLE, "value": summary[:MAX_SUMMARY_CHARS]})
        await self._request("POST", f"/channels/{channel}/continue",
                            {"context": self.transfer_context, "extension": "s", "priority": "1"})


def _value(body: bytes) -> str:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return str(value.get("value", "")) if isinstance(value, dict) else ""
