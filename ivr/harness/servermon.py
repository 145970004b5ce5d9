"""CPU and memory of the server under test, when it is a process on this machine."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit


def find_listening_pid(url: str) -> int | None:
    """The local process listening on the URL's port, if the URL is local and we may see it."""
    try:
        import psutil
    except ImportError:
        return None
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return None
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        return None
    return None


#: How often the server's child processes are listed again: listing them reads every process's
#: /proc entry, a large share of the load generator's own CPU had it run every second.
CHILDREN_EVERY_S = 10.0


class ServerMonitor:
    """Samples the process (and its children) once a second: CPU % of one core, resident memory."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        import psutil

        self.pid = pid
        self.interval_s = interval_s
        self.cpu: list[float] = []
        self.rss_mb: list[float] = []
        self._process = psutil.Process(pid)
        #: The children by pid, the same objects from one sample to the next: cpu_percent(None)
        #: measures since the previous call on the same object (a new one reads 0).
        self._children: dict[int, object] = {}
        self._children_at = float("-inf")
        self._task: asyncio.Task | None = None

    def _processes(self):
        import psutil

        now = time.monotonic()
        if now - self._children_at >= CHILDREN_EVERY_S:
            self._children_at = now
            try:
                found = self._process.children(recursive=True)
            except psutil.Error:
                found = []
            self._children = {c.pid: self._children.get(c.pid, c) for c in found}
        return [self._process, *self._children.values()]

    def _sample(self, first: bool = False) -> None:
        import psutil

        cpu = rss = 0.0
        for proc in self._processes():
            try:
                # cpu_percent(None) measures since the previous call on the same Process object.
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
        if not first:
            self.cpu.append(cpu)
            self.rss_mb.append(rss)

    async def _run(self) -> None:
        self._sample(first=True)
        while True:
            await asyncio.sleep(self.interval_s)
            self._sample()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def summary(self) -> dict:
        n = len(self.cpu)
        return {
            "pid": self.pid,
            "samples": n,
            "cpu_percent_mean": round(sum(self.cpu) / n, 1) if n else None,
            "cpu_percent_max": round(max(self.cpu), 1) if n else None,
            "rss_mb_max": round(max(self.rss_mb), 1) if n else None,
            "rss_mb_last": round(self.rss_mb[-1], 1) if n else None,
        }


# --- the server's own event-loop lag, from its /metrics -------------------------------------

LOOP_LAG_METRIC = "ivr_loop_lag_seconds"


def metrics_url(media_url: str) -> str:
    """The server's /metrics beside its media stream URL (ws://host:port/media)."""
    parts = urlsplit(media_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/metrics"


def read_histogram(url: str, name: str = LOOP_LAG_METRIC, timeout_s: float = 2.0) -> dict[float, float] | None:
    """Cumulative bucket counts {upper bound: count} of a histogram on a Prometheus endpoint;
    None when the endpoint cannot be read or has no such histogram (e.g. not an ivr server)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return None
    buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                if sample.name == name + "_bucket":
                    buckets[float(sample.labels["le"])] = sample.value
    return buckets or None


def histogram_change(before: dict[float, float] | None, after: dict[float, float] | None) -> dict | None:
    """What a histogram recorded between two reads: the count, and the bucket bound under which
    half, 99 % and all of the new observations fall (the finest the buckets can say), in ms."""
    if before is None or after is None:
        return None
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    n = counts[-1] if counts else 0.0
    if n <= 0:
        return {"n": 0, "p50_le": None, "p99_le": None, "max_le": None}

    def bound(q: float) -> float | None:
        for b, c in zip(bounds, counts):
            if c >= q * n:
                return None if b == float("inf") else round(b * 1000, 3)
        return None

    top = next(b for b, c in zip(bounds, counts) if c >= n)
    return {"n": int(n), "p50_le": bound(0.5), "p99_le": bound(0.99),
            "max_le": None if top == float("inf") else round(top * 1000, 3)}
