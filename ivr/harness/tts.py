"""Text-to-speech for the text turns of call scripts, behind one small function type.

A synthesiser takes text and returns (16-bit mono PCM bytes, sample rate). The default uses
the embedded TTS engine of `ivr.providers` when it is installed (`pip install .[local]`);
tests and other tools pass their own.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Synthesiser = Callable[[str], Awaitable[tuple[bytes, int]]]


class NoSynthesiser(RuntimeError):
    pass


def default_synthesiser() -> Synthesiser:
    """The embedded TTS, or an error saying how to get it."""
    try:
        from ivr.providers import local_tts  # type: ignore[attr-defined]
    except ImportError as exc:
        raise NoSynthesiser(
            f"text turns need the embedded TTS (pip install '.[local]'): {exc}"
        ) from None
    engine = None

    async def synthesise(text: str) -> tuple[bytes, int]:
        nonlocal engine
        if engine is None:
            engine = local_tts.default_engine()
        return await synthesise_with(engine, text)

    return synthesise


async def synthesise_with(engine: object, text: str) -> tuple[bytes, int]:
    """Drive a `TextToSpeech` stream (push(text), end(), async iterate chunks) to one buffer."""
    stream = engine.stream()  # type: ignore[attr-defined]
    pieces: list[bytes] = []
    rate = 0
    push = stream.push(text)
    if asyncio.iscoroutine(push):
        await push
    end = stream.end()
    if asyncio.iscoroutine(end):
        await end
    async for chunk in stream:
        rate = chunk.sample_rate
        pieces.append(chunk.audio)
    return b"".join(pieces), rate
