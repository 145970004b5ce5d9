"""Feeding a recording to a speech-to-text session as a call would: 20 ms frames of mu-law."""

from __future__ import annotations

import asyncio
import time

from ivr.audio import FRAME_BYTES

ULAW_BYTES_PER_S = 8000


async def feed_call_audio(session, ulaw: bytes, realtime: bool) -> float:
    """Send `ulaw` in 160-byte frames, paced as a phone line when `realtime`; then finalize and
    close the session. Returns when sending started (perf_counter seconds)."""
    started = time.perf_counter()
    for i in range(0, len(ulaw), FRAME_BYTES):
        await session.send(ulaw[i : i + FRAME_BYTES])
        if realtime:
            await asyncio.sleep(max(0.0, started + (i + FRAME_BYTES) / ULAW_BYTES_PER_S - time.perf_counter()))
    await session.finalize()
    await session.aclose()
    return started
