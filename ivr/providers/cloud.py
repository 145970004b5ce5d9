"""What the cloud adapters share: concurrency limits, metrics, URL and key checks.

A cloud account caps concurrent streams (Deepgram, ElevenLabs) or requests (OpenAI); going over
costs an error at the worst moment. `Limit` queues calls instead and says so in the log, so an
operator sees a too-small limit rather than slow answers with no cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator

from ivr import metrics
from ivr.config import ConfigError

log = logging.getLogger("ivr.providers")

#: Idle connections to a provider's HTTP API are kept this long (seconds) for the next turn: a
#: caller's turn often takes longer than the 5 s HTTP clients default to, and a new connection
#: adds a TLS handshake to the answer. 55 s stays under common load balancers' 60 s idle limit;
#: a server that closes sooner only costs a new connection.
HTTP_KEEPALIVE_S = 55.0


class Limit:
    """A semaphore per provider with a log line (and a counter) when a caller has to wait."""

    def __init__(self, provider: str, size: int, what: str, variable: str) -> None:
        if size < 1:
            raise ConfigError(f"{variable}: must be at least 1, not {size}")
        self.provider, self.size, self.what, self.variable = provider, size, what, variable
        self._sem = asyncio.Semaphore(size)

    async def acquire(self) -> None:
        if not self._sem.locked():
            await self._sem.acquire()
            return
        metrics.PROVIDER_WAITS.labels(self.provider).inc()
        log.warning("all %d %s %s are busy: waiting for one (raise %s if this repeats)",
                    self.size, self.provider, self.what, self.variable)
        t0 = time.monotonic()
        await self._sem.acquire()
        log.info("got a %s %s after %.2f s", self.provider, self.what.rstrip("s"), time.monotonic() - t0)

    def release(self) -> None:
        self._sem.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


def observe_first(provider: str, since: float) -> None:
    metrics.PROVIDER_FIRST_SECONDS.labels(provider).observe(time.monotonic() - since)


def error(provider: str, kind: str) -> None:
    metrics.PROVIDER_ERRORS.labels(provider, kind).inc()


def reconnect(provider: str) -> None:
    metrics.PROVIDER_RECONNECTS.labels(provider).inc()


def fallback(provider: str) -> None:
    metrics.PROVIDER_FALLBACKS.labels(provider).inc()


def ws_base(url: str, variable: str) -> str:
    """A WebSocket base URL without its trailing slash; http(s) is accepted and converted."""
    url = url.strip().rstrip("/")
    for plain, secure in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(plain):
            url = secure + url[len(plain):]
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{variable}: {url!r} must start with wss:// (or ws:// for a local server)")
    return url


def require_key(key: str, provider: str, variable: str, chosen_by: str) -> str:
    key = key.strip()
    if not key:
        raise ConfigError(f"{chosen_by} chooses {provider}, which needs {variable}: set it in the environment")
    if any(c.isspace() for c in key):
        raise ConfigError(f"{variable}: the {provider} key contains spaces or line breaks; check how it was pasted")
    return key


class KeyRejected(Exception):
    """The provider refused our key: a configuration problem, not a network one."""

    def __init__(self, provider: str, variable: str, detail: str) -> None:
        super().__init__(f"{provider} rejected the key in {variable} ({detail}): check {variable}")
        self.provider, self.variable = provider, variable


class Unreachable(Exception):
    """A provider could not be reached (or failed before its first result) and a fallback is
    ready to take over; raised by sessions told so, never seen by the conversation engine."""
