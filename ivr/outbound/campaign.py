"""Campaign mode: many calls from a CSV file, within a rate and a concurrency limit, resumable.

Calls start at most `rate` a second (each at least 1/rate after the previous one, never in
bursts: Twilio queues calls beyond the account's calls-per-second limit, 1 by default) and at most `max_concurrent` are in progress at
once; a call frees its place when Twilio reports it over (its REST resource is polled, so this
works wherever the server's status callbacks land). Every placement is written to the store
before its request goes out, under the campaign's name: a run started again skips every number
the campaign has already tried, even one whose request's answer was lost.

Several runners of one campaign (`ivr call --csv` on two pods, with IVR_REDIS_URL) share it
through ivr.fleet: each number is claimed by one runner only, and the rate is the campaign's
together (each placement books its turn on one schedule). `max_concurrent` is each runner's.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ivr.fleet import SharedState, take_turn
from ivr.fleet.memory import MemoryState
from ivr.outbound.place import NotPlaced, OutboundRequest, PlaceError, Placer
from ivr.outbound.store import FINAL, CallStore

log = logging.getLogger("ivr.outbound")

NUMBER_COLUMNS = ("to", "number", "phone")


class CampaignError(ValueError):
    pass


def read_targets(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """(number, params) per row; the number column is `to`, `number` or `phone`, every other
    column becomes a call parameter (the flow's `{column}`)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise CampaignError(f"{path}: {exc.strerror or exc}") from None
    if not rows:
        return []
    column = next((c for c in rows[0] if c and c.strip().lower() in NUMBER_COLUMNS), None)
    if column is None:
        raise CampaignError(f"{path}: needs a header row with a 'to' (or 'number', 'phone') column")
    targets, seen = [], set()
    for row in rows:
        number = (row.get(column) or "").strip()
        if not number or number in seen:
            continue  # one call per number, even if the file lists it twice
        seen.add(number)
        targets.append((number, {k.strip(): (v or "").strip() for k, v in row.items() if k and k != column}))
    return targets


@dataclass
class Progress:
    total: int
    skipped: int = 0
    placed: int = 0
    active: int = 0
    outcomes: Counter = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)
    place_times: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.outcomes.values())

    def line(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return (f"placed {self.placed}/{self.total - self.skipped} (skipped {self.skipped} already called), "
                f"in progress {self.active}, done {self.done}" + (f": {outcomes}" if outcomes else ""))

    def rate(self) -> float:
        """Calls placed per second, first to last placement."""
        if len(self.place_times) < 2:
            return 0.0
        return (len(self.place_times) - 1) / (self.place_times[-1] - self.place_times[0])


class Campaign:
    def __init__(self, name: str, placer: Placer, store: CallStore, *, from_: str, rate: float, max_concurrent: int,
                 flow: str = "", params: dict | None = None, amd: bool = True, poll_s: float = 2.0,
                 on_progress: Callable[[Progress], None] | None = None, shared: SharedState | None = None) -> None:
        if not rate > 0:
            raise CampaignError("--rate must be more than 0 calls a second")
        if max_concurrent < 1:
            raise CampaignError("--max-concurrent must be at least 1")
        self.name, self.placer, self.store = name, placer, store
        self.from_, self.rate, self.max_concurrent = from_, rate, max_concurrent
        self.flow, self.params, self.amd, self.poll_s = flow, dict(params or {}), amd, poll_s
        self.on_progress = on_progress
        self.shared: SharedState = shared if shared is not None else MemoryState()
        self._stopping = asyncio.Event()

    def already_tried(self) -> set[str]:
        """Numbers this campaign has tried, except those Twilio refused outright (no call existed)."""
        return {v.to for v in self.store.calls() if v.campaign == self.name and not v.not_placed}

    def stop(self) -> None:
        """Place no more calls (Ctrl-C): requests already sent finish and are recorded, calls in
        progress go on (their outcome reaches the server's store), and `run` returns."""
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def run(self, targets: list[tuple[str, dict[str, str]]]) -> Progress:
        tried = await asyncio.to_thread(self.already_tried)
        todo = [(n, p) for n, p in targets if n not in tried]
        progress = Progress(total=len(targets), skipped=len(targets) - len(todo))
        slots = asyncio.Semaphore(self.max_concurrent)
        async with asyncio.TaskGroup() as group:
            for number, row in todo:
                if not await self._free_slot(slots):
                    break
                if not await self.shared.claim_number(self.name, number):
                    slots.release()  # another runner of this campaign has it
                    progress.skipped += 1
                    continue
                # Taken once a slot is free, so a backlog never comes out as a burst: at least
                # 1/rate after the previous placement of this campaign, by any runner.
                if not await take_turn(self.shared, f"campaign:{self.name}", self.rate, stop=self._stopping):
                    await self.shared.unclaim_number(self.name, number)
                    slots.release()
                    break
                request = OutboundRequest(to=number, from_=self.from_, params={**self.params, **row}, flow=self.flow,
                                          amd=self.amd, campaign=self.name)
                progress.place_times.append(time.monotonic())
                progress.placed += 1
                progress.active += 1
                group.create_task(self._one(request, slots, progress))
                self._report(progress)
        self._report(progress)
        return progress

    async def _free_slot(self, slots: asyncio.Semaphore) -> bool:
        """Wait for a place among `max_concurrent`; False if stopped meanwhile."""
        if self._stopping.is_set():
            return False
        acquire = asyncio.ensure_future(slots.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait((acquire, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not acquire.done() or acquire.cancelled():
            acquire.cancel()
            return False
        if self._stopping.is_set():
            slots.release()
            return False
        return True

    async def _one(self, request: OutboundRequest, slots: asyncio.Semaphore, progress: Progress) -> None:
        try:
            try:
                placed = await self.placer.place(request)
            except PlaceError as exc:
                await self.shared.unclaim_number(self.name, request.to)
                await self.store.add({"kind": "error", "id": f"bad-{request.to}", "to": request.to,
                                      "campaign": self.name, "error": str(exc), "not_placed": True})
                progress.outcomes["invalid"] += 1
                return
            except NotPlaced:
                await self.shared.unclaim_number(self.name, request.to)  # no call exists: a resume may try again
                progress.outcomes["not-placed"] += 1
                return
            except Exception:
                progress.outcomes["unknown"] += 1  # the request's answer was lost: not tried again
                return
            progress.outcomes[await self._final_status(placed["sid"])] += 1
        finally:
            progress.active -= 1
            slots.release()
            self._report(progress)

    async def _final_status(self, sid: str) -> str:
        """Poll the call until Twilio says it is over; the store gets the final status too."""
        client = self.placer.rest.client()
        while True:
            try:
                call = await client.calls(sid).fetch_async()
            except Exception as exc:
                log.warning("could not fetch call %s: %s", sid, exc)
            else:
                if call.status in FINAL:
                    rec = {"kind": "status", "sid": sid, "status": call.status, "duration": call.duration}
                    if getattr(call, "answered_by", None):
                        rec["answered_by"] = call.answered_by
                    await self.store.add(rec)
                    if call.status == "completed" and (call.answered_by or "").startswith("machine"):
                        return "voicemail"
                    return call.status
            if self._stopping.is_set():
                return "left-running"  # stopped: its outcome reaches the store by callback
            await self._pause(self.poll_s)

    def _report(self, progress: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress)


def summary(progress: Progress) -> str:
    lines = [f"{progress.placed} call(s) placed, {progress.skipped} skipped (already called by this campaign)"]
    for outcome, count in sorted(progress.outcomes.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {outcome:<12} {count}")
    if progress.placed > 1:
        lines.append(f"placement rate: {progress.rate():.2f} calls/s")
    return "\n".join(lines)


__all__ = ["Campaign", "CampaignError", "Progress", "read_targets", "summary"]
