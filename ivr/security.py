"""Twilio request signatures, and the public URL they are computed over.

Twilio signs each webhook over the full URL it requested plus the POST parameters, and the
Media Stream's WebSocket upgrade over the `wss://` URL exactly as our TwiML wrote it, with no
parameters. Behind a proxy or tunnel the server sees another scheme, host or port, so the URL is
rebuilt from IVR_PUBLIC_URL when set, else from the request with trusted proxy headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator, get_signature_algorithm


@dataclass(frozen=True)
class PublicUrl:
    """How Twilio reaches this server: e.g. https://bot.example.com (no trailing slash)."""

    configured: str = ""
    trust_forwarded_host: bool = False

    def base(self, conn: HTTPConnection) -> str:
        if self.configured:
            return self.configured.rstrip("/")
        # uvicorn has already applied a trusted X-Forwarded-Proto to the scheme.
        scheme = conn.url.scheme
        secure = scheme in ("https", "wss")
        host = conn.headers.get("host", "")
        if self.trust_forwarded_host:
            forwarded = conn.headers.get("x-forwarded-host")
            if forwarded:
                host = forwarded.split(",")[0].strip()
        if not host:
            host = f"{conn.url.hostname}:{conn.url.port}" if conn.url.port else str(conn.url.hostname)
        return f"{'https' if secure else 'http'}://{host}"

    def webhook_url(self, conn: HTTPConnection) -> str:
        """The URL Twilio requested, as it would have written it (path and query kept)."""
        url = self.base(conn) + conn.url.path
        if conn.url.query:
            url += "?" + conn.url.query
        return url

    def stream_url(self, conn: HTTPConnection) -> str:
        base = self.base(conn)
        scheme, rest = base.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + "/media"


class SignatureChecker:
    """Validates X-Twilio-Signature with the account's auth token (HMAC, constant-time compare)."""

    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token) if auth_token else None

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def valid(self, conn: HTTPConnection, url: str, params: Mapping[str, str] | None = None) -> bool:
        """Check the request's signature over `url` and `params` (a form, possibly multi-valued).

        The algorithm (HMAC-SHA1 by default, HMAC-SHA256 when Twilio says so in
        X-Twilio-Webhooks-Signature-Settings) is chosen as the twilio library does.
        """
        if self._validator is None:
            return True
        signature = conn.headers.get("x-twilio-signature")
        if not signature:
            return False
        algorithm = get_signature_algorithm(conn.headers.get("x-twilio-webhooks-signature-settings"))
        return bool(self._validator.validate(url, params if params is not None else {}, signature, algorithm))
