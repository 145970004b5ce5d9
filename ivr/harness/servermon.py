"""CPU and memory of the server under test, when it is a process on this machine."""

from __future__ import annotations

import asyncio
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


class ServerMonitor:
    """Samples the process (and its children) once a second: CPU % of one core, resident memory."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        import psutil

        self.pid = pid
        self.interval_s = interval_s
        self.cpu: list[float] = []
        self.rss_mb: list[float] = []
        self._process = psutil.Process(pid)
        self._task: asyncio.Task | None = None

    def _processes(self):
        import psutil

        try:
            return [self._process, *self._process.children(recursive=True)]
        except psutil.Error:
            return [self._process]

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
