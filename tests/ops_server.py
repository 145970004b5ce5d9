"""A real `ivr serve` in a subprocess, with its JSON log lines readable as they come."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Callable

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from live_server import free_port

Line = dict
Predicate = Callable[[Line], bool]


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class ServeProcess:
    """`python -m ivr serve` on 127.0.0.1 with the embedded engines and JSON logs."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.media_url = f"ws://127.0.0.1:{self.port}/media"
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("IVR_", "TWILIO_", "DEEPGRAM_", "OPENAI_", "ELEVENLABS_"))
        }
        self.env.update({
            "IVR_HOST": "127.0.0.1", "IVR_PORT": str(self.port), "IVR_LOG_FORMAT": "json",
            "IVR_STT": "local", "IVR_TTS": "local", "IVR_BRAIN": "flow",
        })
        self.env.update(env or {})
        self.lines: list[Line] = []
        self.raw: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def start(self, ready_timeout: float = 180) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ivr", "serve",
            env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        # The port opens at once; the engines load behind /readyz ("ready for calls").
        await self.wait_for(lambda r: r.get("msg", "").startswith("Uvicorn running on"), ready_timeout)
        await self.wait_for(lambda r: r.get("msg", "") == "ready for calls", ready_timeout)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                self.lines.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                self.lines.append({"msg": text, "not_json": True})
            self._notify()
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Predicate, timeout: float) -> Line:
        """The first log line matching `predicate`, waiting for it up to `timeout` seconds."""
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                changed = self._changed
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self._reader is not None and self._reader.done():
                    raise AssertionError("ivr serve exited:\n" + "\n".join(self.raw[-30:]))
                await changed.wait()

    async def metrics(self) -> dict[tuple[str, tuple], float]:
        async with httpx.AsyncClient(base_url=self.base) as http:
            return scrape((await http.get("/metrics")).text)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
