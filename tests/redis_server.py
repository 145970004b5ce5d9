"""Debian's `redis-server` on a free loopback port with a throwaway directory, for the tests of
state shared by several servers (ivr.fleet). Nothing is saved to disk (--save '', --appendonly no).
The tests that need it are skipped, saying why, when the binary is not installed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading

import pytest

from live_server import free_port

BINARY = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed (apt-get install redis-server)")
READY = "Ready to accept connections"


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="ivr-redis-")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it (again, on the same port) and return once it accepts connections."""
        assert BINARY is not None
        self.proc = subprocess.Popen(
            [BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        ready = threading.Event()
        seen: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:  # read to the end, so the pipe never fills
                seen.append(line)
                if READY in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError("redis-server did not start:\n" + "".join(seen[-20:]))

    def kill(self) -> None:
        """Gone at once, as a crashed or unreachable Redis is."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def redis_server():
    if BINARY is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
