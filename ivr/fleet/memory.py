"""The shared state kept in this process: one server's behaviour, and a pod's fallback while
Redis is away (see ivr.fleet)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Callable

from ivr.fleet import MAX_INDEXED_CALLS, MAX_OUTCOMES, RESERVATION_TTL_S


class MemoryState:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._outcomes: OrderedDict[str, str] = OrderedDict()
        self._verdicts: OrderedDict[str, str] = OrderedDict()
        self._waiters: dict[str, asyncio.Future] = {}
        self._reserved: dict[str, float] = {}
        self._next_slot: dict[str, float] = {}
        self._claimed: dict[str, set[str]] = {}
        self._index: list[dict] = []

    @staticmethod
    def _bounded_put(table: OrderedDict, key: str, value) -> None:
        table[key] = value
        while len(table) > MAX_OUTCOMES:
            table.popitem(last=False)

    async def put_outcome(self, call_sid: str, twiml_doc: str) -> None:
        self._bounded_put(self._outcomes, call_sid, twiml_doc)

    async def take_outcome(self, call_sid: str) -> str | None:
        return self._outcomes.pop(call_sid, None)

    async def post_verdict(self, call_sid: str, answered_by: str) -> None:
        self.deliver_verdict(call_sid, answered_by)

    def deliver_verdict(self, call_sid: str, answered_by: str) -> None:
        """Keep a verdict and wake the call waiting for it here (synchronous: also the Redis
        subscriber's way in)."""
        self._bounded_put(self._verdicts, call_sid, answered_by)
        waiter = self._waiters.get(call_sid)
        if waiter is not None and not waiter.done():
            waiter.set_result(answered_by)

    def waiting_for(self):
        """The calls waiting for a verdict here (a live view)."""
        return self._waiters.keys()

    async def wait_verdict(self, call_sid: str, timeout_s: float, also: Callable | None = None) -> str | None:
        """`also`: a coroutine function asked once the waiter is in place (Redis: a verdict
        posted before this pod subscribed), whose answer, if any, is taken."""
        if call_sid in self._verdicts:
            return self._verdicts.pop(call_sid)
        waiter = self._waiters.setdefault(call_sid, asyncio.get_running_loop().create_future())
        try:
            if also is not None:
                early = await also()
                if early is not None:
                    return early
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return None
        finally:
            self._waiters.pop(call_sid, None)
            self._verdicts.pop(call_sid, None)

    def _expire(self) -> None:
        now = self._clock()
        for sid in [s for s, until in self._reserved.items() if until <= now]:
            del self._reserved[sid]

    async def reserve_line(self, call_sid: str, free_lines: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        self._expire()
        if call_sid in self._reserved:
            return True
        if len(self._reserved) >= free_lines:
            return False
        self._reserved[call_sid] = self._clock() + ttl_s
        return True

    async def claim_line(self, call_sid: str) -> bool:
        self._expire()
        return self._reserved.pop(call_sid, None) is not None

    async def lines_reserved(self) -> int:
        self._expire()
        return len(self._reserved)

    async def pace(self, key: str, rate: float) -> float:
        now = self._clock()
        at = self._next_slot.get(key, now)
        if at > now:
            return at - now
        self._next_slot[key] = now + 1.0 / rate
        return 0.0

    async def claim_number(self, campaign: str, number: str) -> bool:
        claimed = self._claimed.setdefault(campaign, set())
        if number in claimed:
            return False
        claimed.add(number)
        return True

    async def unclaim_number(self, campaign: str, number: str) -> None:
        self._claimed.get(campaign, set()).discard(number)

    async def index_call(self, entry: dict) -> None:
        self._index.append(entry)
        del self._index[:-MAX_INDEXED_CALLS]

    async def recent_calls(self, limit: int) -> list[dict]:
        return self._index[::-1][:limit]

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def degraded(self) -> str:
        return ""
