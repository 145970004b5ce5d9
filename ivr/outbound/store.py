"""Outbound call records: one JSON object a line, appended, never rewritten.

Appends only, so the server (status callbacks) and a campaign run (placements) can share the file
and an interrupted run loses at most its last line. Reading folds the lines into one `CallView`
per call. Numbers are stored in full (campaign resume needs them); printing masks them.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

FILENAME = "calls.jsonl"
#: Twilio's call statuses, in the order a call goes through them; callbacks may arrive out of
#: order, so a later rank wins over an earlier one, never the reverse.
RANK = {"placing": 0, "queued": 1, "initiated": 2, "ringing": 3, "in-progress": 4, "answered": 4}
FINAL = ("completed", "busy", "no-answer", "failed", "canceled")


def default_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "ivr"


@dataclass
class CallView:
    id: str
    sid: str = ""
    to: str = ""
    from_: str = ""
    flow: str = ""
    campaign: str = ""
    params: dict = field(default_factory=dict)
    status: str = "placing"
    answered_by: str = ""
    duration_s: int | None = None
    error: str = ""
    placed_at: float = 0.0
    updated_at: float = 0.0
    #: The REST request was refused outright: no call exists (a campaign may try again).
    not_placed: bool = False

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def outcome(self) -> str:
        """One word for the summary: the final status, refined by the AMD verdict."""
        if self.not_placed:
            return "not-placed"
        if self.status == "completed" and self.answered_by:
            return "voicemail" if self.answered_by.startswith("machine") else "completed-" + self.answered_by
        return self.status

    def apply(self, rec: dict) -> None:
        kind = rec.get("kind")
        self.updated_at = max(self.updated_at, rec.get("t", 0.0))
        if kind in ("placing", "placed"):
            for key in ("to", "flow", "campaign", "sid"):
                if rec.get(key):
                    setattr(self, key, rec[key])
            self.from_ = rec.get("from") or self.from_
            self.params = rec.get("params") or self.params
            self.placed_at = self.placed_at or rec.get("t", 0.0)
            self._status(rec.get("status") or "placing")
        elif kind == "error":
            self.error = rec.get("error", "")
            self.not_placed = bool(rec.get("not_placed"))
            self._status("failed")
        elif kind == "status":
            self._status(rec.get("status", ""))
            if rec.get("duration") not in (None, ""):
                self.duration_s = int(rec["duration"])
            if rec.get("answered_by"):
                self.answered_by = rec["answered_by"]
        elif kind == "amd":
            self.answered_by = rec.get("answered_by", "") or self.answered_by

    def _status(self, status: str) -> None:
        if not status or self.final:
            return
        if status in FINAL or RANK.get(status, 0) >= RANK.get(self.status, 0):
            self.status = status


class CallStore:
    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory else default_dir()
        self.path = self.dir / FILENAME
        self._lock = threading.Lock()

    def append(self, rec: dict) -> None:
        rec = {"t": time.time(), **rec}
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            # One write() of one line in append mode: lines from several processes do not interleave.
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)

    async def add(self, rec: dict) -> None:
        """`append` off the event loop (a disk can stall)."""
        await asyncio.to_thread(self.append, rec)

    def records(self) -> Iterator[dict]:
        try:
            f = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash

    def calls(self) -> list[CallView]:
        """Every call, oldest first. Callbacks are joined to their placement by call SID."""
        return fold(self.records())


def fold(records: Iterable[dict]) -> list[CallView]:
    views: dict[str, CallView] = {}
    by_sid: dict[str, str] = {}
    orphans: dict[str, list[dict]] = {}  # callbacks that came before their placement was written
    for rec in records:
        sid = rec.get("sid", "")
        key = rec.get("id") or by_sid.get(sid)
        if key is None:
            orphans.setdefault(sid, []).append(rec)
            continue
        view = views.get(key)
        if view is None:
            view = views[key] = CallView(id=key)
        view.apply(rec)
        if view.sid and view.sid not in by_sid:
            by_sid[view.sid] = key
            for early in orphans.pop(view.sid, []):
                view.apply(early)
    for sid, recs in orphans.items():  # calls placed elsewhere (another store): still listed
        view = views[sid] = CallView(id=sid, sid=sid)
        for rec in recs:
            view.apply(rec)
    return sorted(views.values(), key=lambda v: v.placed_at or v.updated_at)
