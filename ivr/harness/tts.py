"""Text-to-speech for the text turns of call scripts, behind one small function type.

A synthesiser takes text and returns (16-bit mono PCM bytes, sample rate). The default drives
the embedded engine of `ivr.providers` (piper) through its `TextToSpeech` stream interface when
it is installed (`pip install '.[local]'`); tests and other tools pass their own.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from ivr.audio import ulaw_to_pcm16

Synthesiser = Callable[[str], Awaitable[tuple[bytes, int]]]


class NoSynthesiser(RuntimeError):
    pass


def default_synthesiser(repeatable: bool = False) -> Synthesiser:
    """The embedded TTS, loaded on first use, or an error saying how to get it. `repeatable`: the
    voice's random variation off, so a text gives the same audio on every run (`ivr test`)."""
    try:
        from ivr.providers.local_tts import PiperTts
    except ImportError as exc:
        raise NoSynthesiser(f"text turns need the embedded TTS (pip install '.[local]'): {exc}") from None
    engine = None

    async def synthesise(text: str) -> tuple[bytes, int]:
        nonlocal engine
        if engine is None:
            try:
                engine = PiperTts(workers=1, noise_scale=0.0, noise_w_scale=0.0) if repeatable else PiperTts(workers=1)
                await engine.load()
            except ImportError as exc:
                raise NoSynthesiser(f"text turns need the embedded TTS (pip install '.[local]'): {exc}") from None
        return await synthesise_with(engine, text)

    return synthesise


async def synthesise_with(engine: object, text: str) -> tuple[bytes, int]:
    """Drive a `TextToSpeech` stream (push, end, iterate AudioChunk) to one PCM buffer."""
    stream = engine.stream()  # type: ignore[attr-defined]
    await stream.push(text)
    await stream.end()
    pieces: list[bytes] = []
    rate = getattr(engine, "sample_rate", 0)
    async for chunk in stream:
        rate = chunk.sample_rate
        pieces.append(ulaw_to_pcm16(chunk.audio) if chunk.encoding == "ulaw" else chunk.audio)
    return b"".join(pieces), rate
