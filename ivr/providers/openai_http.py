"""The OpenAI HTTP API as the brain uses it: streamed chat completions and the model list.

A thin client on aiohttp (the transport the `openai` SDK itself offers as its fast option), not
the SDK: the SDK's request building (its options model, header merging, an httpx request turned
into an aiohttp one) costs about 1.2 ms between our call and the request leaving, on the path of
every answer, where the whole of ivr's own share is meant to stay under 10 ms. What the SDK would
give us is kept: the same headers (`Authorization: Bearer`, `OpenAI-Organization` and
`OpenAI-Project` from OPENAI_ORG_ID / OPENAI_PROJECT_ID as the SDK reads them), the same error
reading (`{"error": {"message", "type", "code"}}` for a non-2xx status, or inside the stream), and
the same stream handling (`data: [DONE]` ends it; the rest of the body is read so the connection
goes back to the pool). Proxies come from the environment (HTTPS_PROXY, NO_PROXY), as with the
SDK, read once: aiohttp's `trust_env` reads them again on every request (~1 ms each).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import orjson

from ivr.providers import cloud
from ivr.providers.sse import SseDecoder

USER_AGENT = "ivr (OpenAI-compatible chat client)"


class ApiError(Exception):
    """The API answered with an error (`status` 0: inside a stream that had begun)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.message, self.code = status, message, code


class ApiConnectionError(Exception):
    """The server could not be reached, or the connection broke."""


def _error_message(status: int, body: bytes) -> ApiError:
    try:
        err = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        err = None
    if isinstance(err, dict):
        return ApiError(status, str(err.get("message") or "no message"), err.get("code"))
    if isinstance(err, str):
        return ApiError(status, err)
    return ApiError(status, body[:200].decode("utf-8", "replace").strip() or "no body")


class OpenAIHttp:
    def __init__(self, api_key: str, base_url: str, connect_s: float = 3.0) -> None:
        env = os.environ
        self.base_url = base_url.rstrip("/")
        self.connect_s = connect_s
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json",
                        "Accept": "application/json", "User-Agent": USER_AGENT}
        if env.get("OPENAI_ORG_ID"):
            self.headers["OpenAI-Organization"] = env["OPENAI_ORG_ID"]
        if env.get("OPENAI_PROJECT_ID"):
            self.headers["OpenAI-Project"] = env["OPENAI_PROJECT_ID"]
        self.proxy = _env_proxy(self.base_url)
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self):
        import aiohttp

        # An aiohttp session belongs to the event loop it was made on.
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=cloud.HTTP_KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_s))
            self._loop = loop
        return self._session

    async def models(self) -> list[dict]:
        import aiohttp

        try:
            async with self._client().get(f"{self.base_url}/models", proxy=self.proxy) as resp:
                body = await resp.read()
        except aiohttp.ClientError as exc:
            raise ApiConnectionError(f"{type(exc).__name__}: {exc}") from None
        if resp.status >= 300:
            raise _error_message(resp.status, body)
        data = orjson.loads(body).get("data")
        return data if isinstance(data, list) else []

    @contextlib.asynccontextmanager
    async def chat_stream(self, body: dict) -> AsyncIterator[AsyncIterator[dict]]:
        """POST /chat/completions with `stream: true`; yields an iterator of the decoded chunks.

        Leaving the block early (a barge-in, a timeout) closes the connection, so the server stops
        generating; a stream read to its end leaves the connection for the next request.
        """
        import aiohttp

        data = orjson.dumps(body)
        for attempt in (1, 2):
            try:
                resp = await self._client().post(f"{self.base_url}/chat/completions", data=data, proxy=self.proxy)
                break
            except aiohttp.ClientConnectorError as exc:  # no connection at all: down, not a race
                raise ApiConnectionError(f"{type(exc).__name__}: {exc}") from None
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                # A pooled connection the server closed as we sent (its keep-alive ran out just
                # then) breaks before any answer. aiohttp retries this itself only for idempotent
                # methods; a chat request has no effect to repeat, and the SDK retries it too, so
                # it goes once more, at once, on a new connection.
                if attempt == 2:
                    raise ApiConnectionError(f"{type(exc).__name__}: {exc}") from None
            except aiohttp.ClientError as exc:
                raise ApiConnectionError(f"{type(exc).__name__}: {exc}") from None
        finished = False

        async def chunks() -> AsyncIterator[dict]:
            nonlocal finished
            decoder = SseDecoder()
            try:
                async for line in resp.content:
                    event = decoder.line(line)
                    if event is not None and (chunk := _chunk(event)) is not None:
                        yield chunk
            except _Done:
                async for _line in resp.content:
                    pass  # the end of the body, so the connection can be reused
            except aiohttp.ClientError as exc:
                raise ApiConnectionError(f"{type(exc).__name__}: {exc}") from None
            except ValueError:  # aiohttp's readline: a line over its 128 KiB limit
                raise ApiError(0, "a stream line longer than 128 KiB") from None
            finished = True

        stream = chunks()
        try:
            if resp.status >= 300:
                raise _error_message(resp.status, await resp.read())
            yield stream
        finally:
            await stream.aclose()
            if finished:
                resp.release()
            else:
                resp.close()


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment sets for this URL (HTTPS_PROXY/HTTP_PROXY), unless NO_PROXY covers it."""
    parts = urlsplit(base_url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxy


class _Done(Exception):
    pass


def _chunk(event: tuple[str, str]) -> dict | None:
    name, data = event
    if data.startswith("[DONE]"):
        raise _Done
    if not data:
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ApiError(0, f"unreadable stream event {data[:80]!r}") from None
    if isinstance(chunk, dict) and chunk.get("error"):
        err = chunk["error"]
        raise ApiError(0, str(err.get("message") if isinstance(err, dict) else err), None)
    if name == "error":
        raise ApiError(0, data[:200])
    return chunk if isinstance(chunk, dict) else None
