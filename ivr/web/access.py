"""Who may use the web phone and the call viewer.

The web phone opens /media without Twilio's signature, so it must not become a way around it:
- it is off unless the server listens on loopback or IVR_WEBPHONE=1;
- behind a public URL (IVR_PUBLIC_URL set, or a non-loopback listen address) every request must
  carry IVR_WEBPHONE_TOKEN: as the session cookie that /phone/login sets after checking the
  token, or as `Authorization: Bearer <token>`; with no token configured there, it is refused;
- on loopback without a token, the request's Host must be a loopback name and no proxy may have
  forwarded it (a tunnel to 127.0.0.1 is not local), which also defeats DNS rebinding;
- a browser's Origin, when sent, must be this server's own: another site open in the same
  browser cannot open the web phone's sockets.
All comparisons of secrets are constant-time; the token itself is never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

COOKIE = "ivr_webphone"
_PROXY_HEADERS = ("x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded", "x-real-ip")


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    return urlsplit("//" + netloc).hostname or ""


@dataclass(frozen=True)
class WebAccess:
    enabled: bool
    token_required: bool
    public_url: str = ""
    token: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, settings) -> "WebAccess":
        loopback = is_loopback(settings.host)
        public = bool(settings.public_url) or not loopback
        token = settings.webphone_token
        return cls(
            enabled=bool(settings.webphone) or loopback,
            token_required=public or bool(token),
            public_url=settings.public_url.rstrip("/"),
            token=token,
        )

    @property
    def misconfigured(self) -> bool:
        """On behind a public URL without a token: every request is refused."""
        return self.enabled and self.token_required and not self.token

    def session_value(self) -> str:
        """The cookie value: derived from the token, so the cookie never holds the token itself,
        and changing the token ends every session."""
        return hmac.new(self.token.encode(), b"ivr-webphone-session/1", hashlib.sha256).hexdigest()

    def token_matches(self, presented: str) -> bool:
        return bool(self.token) and hmac.compare_digest(presented.encode(), self.token.encode())

    def refusal(self, conn: HTTPConnection) -> tuple[int, str] | None:
        """(HTTP status, reason) if `conn` may not use the web phone, else None."""
        if not self.enabled:
            return 404, "the web phone is off (set IVR_WEBPHONE=1)"
        if not self._origin_ok(conn):
            return 403, "cross-site request refused"
        if self.token_required:
            if not self.token:
                return 403, "the web phone needs IVR_WEBPHONE_TOKEN when the server is reachable from outside"
            if not self._presented_ok(conn):
                return 401, "web phone token required"
            return None
        host = _hostname(conn.headers.get("host", ""))
        if not is_loopback(host) or any(h in conn.headers for h in _PROXY_HEADERS):
            return 403, "the web phone without a token answers loopback requests only"
        return None

    def _presented_ok(self, conn: HTTPConnection) -> bool:
        cookie = conn.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session_value().encode()):
            return True
        auth = conn.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def _origin_ok(self, conn: HTTPConnection) -> bool:
        origin = conn.headers.get("origin")
        if origin is None:
            return True  # not a browser, or a same-origin GET: nothing cross-site to stop
        netloc = urlsplit(origin).netloc.lower()
        allowed = {conn.headers.get("host", "").lower()}
        if self.public_url:
            allowed.add(urlsplit(self.public_url).netloc.lower())
        return bool(netloc) and netloc in allowed
