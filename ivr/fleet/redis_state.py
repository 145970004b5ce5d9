"""The shared state in Redis (`IVR_REDIS_URL`), with this pod's memory as the fallback.

Every key lives under `ivr:` with an expiry. Operations that read and write together run as Lua
scripts, which Redis executes atomically, on Redis's own clock (`TIME`), so pods whose clocks
differ still agree. The scripts touch several keys: a single Redis (or a primary with Sentinel,
or a managed one), not Redis Cluster.

Losing Redis loses no call: an operation that cannot reach it is served by the pod's own
`MemoryState` (what one server does alone), `ivr_redis_up` turns 0 and one warning says so; a
probe pings Redis until it answers, then the pod goes back to it (one line says that too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ivr.fleet import (CAMPAIGN_TTL_S, MAX_INDEXED_CALLS, OUTCOME_TTL_S, RESERVATION_TTL_S, VERDICT_TTL_S,
                       pod_name)
from ivr.fleet.memory import MemoryState
from ivr.fleet.metrics import FALLBACKS, REDIS_UP

log = logging.getLogger("ivr.fleet")

T = TypeVar("T")
PREFIX = "ivr:"
VERDICTS_CHANNEL = PREFIX + "amd"
#: While Redis is away, how often the probe asks again.
PROBE_S = 1.0
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# Reserve a line of this pod for a call (KEYS: the pod's reservations, the call's owner key).
# A call already held anywhere (Twilio asking again) stays held; otherwise only if this pod
# holds fewer than ARGV[2] (its free lines).
RESERVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
return 1
"""
# The call's stream arrived (or the call ended): drop its reservation on whichever pod holds it.
CLAIM = """
local owner = redis.call('GET', KEYS[1])
if not owner then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[1] .. owner, ARGV[2])
return 1
"""
HELD = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000))
return redis.call('ZCARD', KEYS[1])
"""
# Pacing (the generic cell rate algorithm with no burst allowance): the key holds when the next
# placement may go, in microseconds of Redis time, shared by every pod. A caller whose turn is
# due takes it (the next turn is then a gap after now) and gets 0; one who is early gets the
# microseconds still to wait and takes nothing. Check and take are one script, so two pods can
# never both take the same turn.
PACE = """
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
if at > now then return at - now end
local gap = tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', now + gap), 'PX', math.ceil(gap / 1000) + 1000)
return 0
"""


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisState:
    def __init__(self, url: str, pod: str | None = None, probe_s: float = PROBE_S) -> None:
        self.url = url
        self.pod = pod or pod_name()
        self.local = MemoryState()
        self.probe_s = probe_s
        # One quick retry (a pooled connection Redis closed while restarting), never a backoff:
        # while Redis is away a webhook must not wait for it.
        self._client = aioredis.from_url(url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0,
                                         retry=Retry(NoBackoff(), 1), client_name=f"ivr-{self.pod}")
        self._reserve = self._client.register_script(RESERVE)
        self._claim = self._client.register_script(CLAIM)
        self._held = self._client.register_script(HELD)
        self._pace = self._client.register_script(PACE)
        self._up = False
        self._up_event = asyncio.Event()
        self._started = False
        self._down_since: float | None = None
        self._listener: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None
        self._lines_key = f"{PREFIX}lines:{self.pod}"

    # --- health ----------------------------------------------------------------------------

    def degraded(self) -> str:
        if self._up or not self._started:
            return ""
        since = time.strftime("%H:%M:%S UTC", time.gmtime(self._down_since or time.time()))
        return (f"Redis ({redacted(self.url)}) unreachable since {since}: fallback outcomes, AMD verdicts, line "
                "reservations, call pacing and the /calls index are this pod's own until it returns")

    def _went_down(self, exc: BaseException) -> None:
        if self._up or self._down_since is None:
            self._down_since = time.time()
            log.warning("Redis at %s is unreachable (%s): calls go on; cross-pod state is this pod's own until it "
                        "returns", redacted(self.url), exc or type(exc).__name__)
        self._up = False
        self._up_event.clear()
        REDIS_UP.set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up(), name="redis-probe")

    @property
    def up(self) -> bool:
        return self._up

    async def wait_up(self) -> None:
        """Until Redis answers (at once if it does)."""
        await self._up_event.wait()

    async def _came_up(self) -> None:
        self._up = True
        self._up_event.set()
        REDIS_UP.set(1)
        if self._down_since is not None:
            log.warning("Redis at %s answers again: cross-pod state is shared again", redacted(self.url))
            self._down_since = None
        else:
            log.info("shared state in Redis at %s (pod %s)", redacted(self.url), self.pod)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="redis-verdicts")
        # Verdicts posted while this pod could not hear them are in their keys.
        for sid in list(self.local.waiting_for()):
            with contextlib.suppress(RedisError, OSError):
                verdict = await self._client.getdel(f"{PREFIX}amd:{sid}")
                if verdict is not None:
                    self.local.deliver_verdict(sid, verdict)

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)  # a timer between pings, not a test's wait
            try:
                await self._client.ping()
            except UNREACHABLE:
                continue
            except RedisError as exc:  # e.g. a wrong password: keep trying, say why once
                log.debug("Redis probe: %s", exc)
                continue
            await self._came_up()
            return

    async def _listen(self) -> None:
        """Hand each verdict published by any pod to the call waiting for it here."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(VERDICTS_CHANNEL)
            # Subscribed: verdicts posted from now on arrive here; earlier ones are in their keys.
            for sid in list(self.local.waiting_for()):
                verdict = await self._client.getdel(f"{PREFIX}amd:{sid}")
                if verdict is not None:
                    self.local.deliver_verdict(sid, verdict)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    sid, _, verdict = str(message["data"]).partition(" ")
                    # Every pod hears every verdict: only the one holding the call keeps it
                    # (a call that starts waiting later finds it in its key).
                    if sid in self.local.waiting_for():
                        self.local.deliver_verdict(sid, verdict)
        except asyncio.CancelledError:
            raise
        except UNREACHABLE as exc:
            self._went_down(exc)
        except Exception:
            log.exception("the Redis verdict subscriber failed")
            self._went_down(RuntimeError("subscriber failed"))
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _run(self, op: str, remote: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        if self._up:
            try:
                return await remote()
            except UNREACHABLE as exc:
                self._went_down(exc)
            except RedisError:
                log.exception("Redis refused %s; this pod's own state serves it", op)
        FALLBACKS.labels(op).inc()
        return await local()

    async def start(self) -> None:
        self._started = True
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return
        await self._came_up()

    async def aclose(self) -> None:
        for task in (self._probe, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._up:
            # This pod holds no line any more (its reservations' streams may still be claimed
            # by other pods: each call's owner key stays until it expires).
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(self._lines_key)
        with contextlib.suppress(Exception):
            await self._client.aclose()
        self._up = False

    # --- planned outcomes -----------------------------------------------------------------

    async def put_outcome(self, call_sid: str, twiml_doc: str) -> None:
        await self._run("outcome",
                        lambda: self._client.set(f"{PREFIX}outcome:{call_sid}", twiml_doc, ex=OUTCOME_TTL_S),
                        lambda: self.local.put_outcome(call_sid, twiml_doc))

    async def take_outcome(self, call_sid: str) -> str | None:
        async def none():
            return None

        doc = await self._run("outcome", lambda: self._client.getdel(f"{PREFIX}outcome:{call_sid}"), none)
        # One written here while Redis was away.
        return doc if doc is not None else await self.local.take_outcome(call_sid)

    # --- AMD verdicts -----------------------------------------------------------------------

    async def post_verdict(self, call_sid: str, answered_by: str) -> None:
        async def remote():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(f"{PREFIX}amd:{call_sid}", answered_by, ex=VERDICT_TTL_S)
                pipe.publish(VERDICTS_CHANNEL, f"{call_sid} {answered_by}")
                await pipe.execute()

        await self._run("verdict", remote, lambda: self.local.post_verdict(call_sid, answered_by))

    async def wait_verdict(self, call_sid: str, timeout_s: float) -> str | None:
        key = f"{PREFIX}amd:{call_sid}"

        async def stored():
            if not self._up:
                return None
            try:
                return await self._client.getdel(key)
            except (RedisError, OSError) as exc:
                self._went_down(exc)
                return None

        verdict = await self.local.wait_verdict(call_sid, timeout_s, also=stored)
        if verdict is not None and self._up:
            with contextlib.suppress(RedisError, OSError):
                await self._client.delete(key)  # heard here by pub/sub: nobody needs it kept
        return verdict

    # --- line reservations ------------------------------------------------------------------

    async def reserve_line(self, call_sid: str, free_lines: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        held_here = await self.local.lines_reserved()
        return await self._run(
            "lines",
            lambda: self._bool(self._reserve(keys=[self._lines_key, f"{PREFIX}line:{call_sid}"],
                                             args=[call_sid, free_lines - held_here, int(ttl_s * 1000), self.pod])),
            lambda: self.local.reserve_line(call_sid, free_lines, ttl_s))

    async def claim_line(self, call_sid: str) -> bool:
        async def no():
            return False

        remote = await self._run("lines", lambda: self._bool(self._claim(keys=[f"{PREFIX}line:{call_sid}"],
                                                                          args=[f"{PREFIX}lines:", call_sid])), no)
        local = await self.local.claim_line(call_sid)
        return remote or local

    async def lines_reserved(self) -> int:
        async def none():
            return 0

        remote = await self._run("lines", lambda: self._int(self._held(keys=[self._lines_key])), none)
        return remote + await self.local.lines_reserved()

    # --- placing calls ------------------------------------------------------------------------

    async def pace(self, key: str, rate: float) -> float:
        async def remote():
            return int(await self._pace(keys=[f"{PREFIX}pace:{key}"], args=[int(1e6 / rate)])) / 1e6

        return await self._run("pace", remote, lambda: self.local.pace(key, rate))

    async def claim_number(self, campaign: str, number: str) -> bool:
        key = f"{PREFIX}campaign:{campaign}:claimed"

        async def remote():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.sadd(key, number)
                pipe.expire(key, CAMPAIGN_TTL_S)
                added, _ = await pipe.execute()
            return added == 1

        return await self._run("campaign", remote, lambda: self.local.claim_number(campaign, number))

    async def unclaim_number(self, campaign: str, number: str) -> None:
        await self._run("campaign", lambda: self._client.srem(f"{PREFIX}campaign:{campaign}:claimed", number),
                        lambda: self.local.unclaim_number(campaign, number))

    # --- the index of recent calls ----------------------------------------------------------

    async def index_call(self, entry: dict) -> None:
        entry = {"t": time.time(), **entry}
        key = f"{PREFIX}calls"

        async def remote():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {json.dumps(entry, sort_keys=True): entry["t"]})
                pipe.zremrangebyrank(key, 0, -MAX_INDEXED_CALLS - 1)
                pipe.expire(key, CAMPAIGN_TTL_S)
                await pipe.execute()

        await self._run("index", remote, lambda: self.local.index_call(entry))

    async def recent_calls(self, limit: int) -> list[dict]:
        async def remote():
            return [json.loads(m) for m in await self._client.zrevrange(f"{PREFIX}calls", 0, limit - 1)]

        async def none():
            return []

        entries = await self._run("index", remote, none) + await self.local.recent_calls(limit)
        entries.sort(key=lambda e: e.get("t", 0), reverse=True)
        return entries[:limit]

    @staticmethod
    async def _bool(result: Awaitable) -> bool:
        return bool(int(await result))

    @staticmethod
    async def _int(result: Awaitable) -> int:
        return int(await result)
