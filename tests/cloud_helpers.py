"""Audio and waiting helpers for the cloud adapter tests."""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Callable

from ivr.audio import pcm16_to_ulaw

FRAME = 160


def tone(ms: int, hz: float = 220.0, level: int = 8000) -> bytes:
    """Voiced-looking 8 kHz mu-law (a tone loud enough for the fakes' energy detector)."""
    n = ms * 8
    pcm = struct.pack(f"<{n}h", *(int(level * math.sin(2 * math.pi * hz * i / 8000)) for i in range(n)))
    return pcm16_to_ulaw(pcm)


def silence(ms: int) -> bytes:
    return b"\xff" * (ms * 8)


def frames(ulaw: bytes) -> list[bytes]:
    return [ulaw[i:i + FRAME] for i in range(0, len(ulaw), FRAME)]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition another thread or task makes true (polled: it lives in a fake)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)
