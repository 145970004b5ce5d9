"""State that crosses pods: what one server must know of a call another server handled.

Twilio's requests for one call are separate HTTP requests that a load balancer spreads over the
pods: the voice webhook, the Media Stream upgrade, the status and AMD callbacks and
`/twiml/fallback` may each reach a different one. What they must agree on goes through one small
interface, `SharedState`, with two implementations:

- `MemoryState` (ivr.fleet.memory): in this process only, the single-server behaviour (and what
  a pod falls back to while Redis is away);
- `RedisState` (ivr.fleet.redis_state): in Redis, chosen by `IVR_REDIS_URL`, every key with an
  expiry. If Redis goes away, each operation is served by the pod's own `MemoryState` (a warning
  once, `ivr_redis_up` 0, `/readyz` says so) until Redis answers again: calls go on.

What is shared: the planned outcome of a stream the bot ended (for `/twiml/fallback`), AMD
verdicts (published to the pod holding the stream, kept for a pod that asks later), line
reservations keyed by CallSid, the pace of placing calls and which numbers a campaign has
claimed, and the index of recent calls for `/calls`. What is not: the calls themselves (a
stream lives on the pod that took it), the drain (each pod drains alone), capture files and
outbound records (files: put them on shared storage to see them from every pod).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

#: How long each kind of shared entry lives (seconds). A planned outcome is fetched by Twilio
#: right after the stream ends; a verdict comes within MachineDetectionTimeout (30 s by default)
#: of the answer and is read when the greeting is due.
OUTCOME_TTL_S = 600
VERDICT_TTL_S = 600
#: Long enough for Twilio to open the stream after fetching our TwiML (normally under a second).
RESERVATION_TTL_S = 15.0
#: A campaign's claimed numbers are kept this long after its last placement (resuming later
#: relies on the outbound records as well).
CAMPAIGN_TTL_S = 30 * 24 * 3600
#: Entries kept in the index of recent calls.
MAX_INDEXED_CALLS = 1000
MAX_OUTCOMES = 10_000


class SharedState(Protocol):
    """One way to do each cross-pod thing; every method is safe to call at any time."""

    # --- how a stream the bot ended goes on (/twiml/fallback) ---
    async def put_outcome(self, call_sid: str, twiml_doc: str) -> None: ...

    async def take_outcome(self, call_sid: str) -> str | None: ...

    # --- answering-machine verdicts ---
    async def post_verdict(self, call_sid: str, answered_by: str) -> None: ...

    async def wait_verdict(self, call_sid: str, timeout_s: float) -> str | None:
        """The verdict, posted before or while waiting, on any pod; None after `timeout_s`."""
        ...

    # --- line reservations, keyed by CallSid ---
    async def reserve_line(self, call_sid: str, free_lines: int, ttl_s: float = RESERVATION_TTL_S) -> bool:
        """Hold a line of this pod for a call whose webhook it answered, if fewer than
        `free_lines` are held already (a call held anywhere is True at once)."""
        ...

    async def claim_line(self, call_sid: str) -> bool:
        """The call's stream arrived here: drop its reservation, wherever it is (True if any)."""
        ...

    async def lines_reserved(self) -> int:
        """Reservations this pod holds now."""
        ...

    # --- placing calls ---
    async def pace(self, key: str, rate: float) -> float:
        """Take the turn to place a call of `key` at `rate` calls a second, shared by every pod:
        0 if taken (place it now), else the seconds until the next turn (nothing taken: ask
        again then). See `take_turn`."""
        ...

    async def claim_number(self, campaign: str, number: str) -> bool:
        """True for the first runner of `campaign` (on any pod) to claim `number`."""
        ...

    async def unclaim_number(self, campaign: str, number: str) -> None:
        """Twilio refused the call outright: a later run may try the number again."""
        ...

    # --- the index of recent calls (/calls) ---
    async def index_call(self, entry: dict) -> None:
        """`entry` has at least `name` (the capture file) and `pod`."""
        ...

    async def recent_calls(self, limit: int) -> list[dict]: ...

    # --- lifecycle and health ---
    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def degraded(self) -> str:
        """Empty when all is well; otherwise what is degraded, for /readyz."""
        ...


async def take_turn(shared: SharedState, key: str, rate: float, max_wait_s: float = float("inf"),
                    stop: asyncio.Event | None = None) -> bool:
    """Wait for the turn to place a call of `key`, at most 1/rate after the previous one placed
    by any pod. A turn is taken when it is due, not booked ahead: a runner that wakes late
    moves the next turn on, so calls never come out closer together than 1/rate (a backlog
    never comes out as a burst). False, with nothing taken, if it would take longer than
    `max_wait_s` or `stop` is set meanwhile."""
    deadline = time.monotonic() + max_wait_s
    while True:
        if stop is not None and stop.is_set():
            return False
        wait = await shared.pace(key, rate)
        if wait <= 0:
            return True
        if time.monotonic() + wait > deadline:
            return False
        if stop is None:
            await asyncio.sleep(wait)
            continue
        try:
            async with asyncio.timeout(wait):
                await stop.wait()
        except TimeoutError:
            pass


def pod_name() -> str:
    """This process, as other pods see it: the pod's host name and the process id."""
    import os
    import socket

    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


def open_shared(redis_url: str = "") -> SharedState:
    """The shared state `IVR_REDIS_URL` asks for: Redis, or this process's memory when unset."""
    from ivr.fleet.memory import MemoryState

    if not redis_url:
        return MemoryState()
    from ivr.fleet.redis_state import RedisState

    return RedisState(redis_url)


__all__ = ["SharedState", "open_shared", "pod_name", "take_turn"]
