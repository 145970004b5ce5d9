"""What the bot said, for the report: from a side channel when the server offers one, else by
transcribing the bot's audio as the caller heard it (the embedded STT), else left empty.

A transcriber is any `async (pcm16 at 8 kHz) -> str`; `add_bot_texts` fills `bot_text` in a
report from it, one stretch per bot answer.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from ivr.audio import SAMPLE_RATE
from ivr.harness.record import CallRecord
from ivr.harness.wavout import heard_channels

Transcriber = Callable[[bytes], Awaitable[str]]


def local_transcriber() -> Transcriber:
    """The embedded faster-whisper engine (raises ImportError without the `local` extra)."""
    from ivr.providers.local_stt import WhisperStt

    engine = WhisperStt(workers=1)
    loaded = False

    async def transcribe(pcm8: bytes) -> str:
        nonlocal loaded
        if not loaded:
            await engine.load()
            loaded = True
        return await engine.transcribe(pcm8)

    return transcribe


async def add_bot_texts(report: dict, record: CallRecord, transcribe: Transcriber) -> None:
    """Transcribe the bot's heard audio from each answer's first audio to the next caller turn."""
    _, bot = heard_channels(record)
    turns = report["turns"]
    end = report["call"]["duration_ms"]
    windows = []
    first_caller = turns[0]["caller_speech_start_ms"] if turns else end
    if report["greeting"]["bot_first_audio_ms"] is not None and report["greeting"]["bot_text"] is None:
        windows.append((report["greeting"], report["greeting"]["bot_first_audio_ms"], first_caller))
    for i, turn in enumerate(turns):
        if turn["bot_first_audio_ms"] is None or turn["bot_text"] is not None:
            continue
        next_start = turns[i + 1]["caller_speech_start_ms"] if i + 1 < len(turns) else end
        windows.append((turn, turn["bot_first_audio_ms"], next_start))
    for entry, start, stop in windows:
        a, b = int(start * SAMPLE_RATE / 1000), int(stop * SAMPLE_RATE / 1000)
        if b > a:
            entry["bot_text"] = (await transcribe(bot[a:b].tobytes())).strip() or None
