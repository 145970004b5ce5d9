"""Changing a live call through Twilio's REST API: transfer (new TwiML) and hang-up.

Credentials: TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN, or an API key pair (TWILIO_API_KEY,
TWILIO_API_SECRET). IVR_TWILIO_API_URL sends the requests elsewhere (a regional edge, a proxy, or a
fake API in tests).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger("ivr.twilio_rest")


class TwilioRestError(RuntimeError):
    pass


class TwilioRest:
    def __init__(self, account_sid: str, auth_token: str = "", api_key: str = "", api_secret: str = "", base_url: str = "") -> None:
        self.account_sid = account_sid
        self._auth = (api_key, api_secret) if api_key and api_secret else (account_sid, auth_token)
        self.base_url = base_url.rstrip("/")
        self._client = None

    def client(self):
        # Made on first use: its aiohttp session belongs to the running event loop.
        if self._client is None:
            from twilio.http.async_http_client import AsyncTwilioHttpClient
            from twilio.rest import Client

            client = Client(*self._auth, self.account_sid, http_client=AsyncTwilioHttpClient())
            if self.base_url:
                client.api.base_url = self.base_url
            self._client = client
        return self._client

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TwilioRest | None":
        """A client when credentials are configured, else None (transfers then cannot happen)."""
        env = os.environ if env is None else env
        sid = env.get("TWILIO_ACCOUNT_SID", "")
        token = env.get("TWILIO_AUTH_TOKEN", "")
        key, secret = env.get("TWILIO_API_KEY", ""), env.get("TWILIO_API_SECRET", "")
        if not sid or not (token or (key and secret)):
            return None
        return cls(sid, token, key, secret, env.get("IVR_TWILIO_API_URL", ""))

    async def update_twiml(self, call_sid: str, twiml: str) -> None:
        try:
            await self.client().calls(call_sid).update_async(twiml=twiml)
        except Exception as exc:  # the twilio library raises several kinds; all mean "not done"
            raise TwilioRestError(f"Twilio REST update of call {call_sid} failed: {exc}") from exc

    async def hang_up(self, call_sid: str) -> None:
        try:
            await self.client().calls(call_sid).update_async(status="completed")
        except Exception as exc:
            raise TwilioRestError(f"Twilio REST hang-up of call {call_sid} failed: {exc}") from exc
