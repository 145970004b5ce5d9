"""`ivr stt FILE`: transcribe a recording through the same phone-line path as a call.

The file is taken to 8 kHz, through mu-law and back (what a caller's voice goes through), then fed
to a speech-to-text session in 20 ms frames, as Twilio would send it. Prints each event with its
time in the audio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import wave
from pathlib import Path

from ivr.audio import SUPPORTED_RATES, pcm16_to_ulaw, resample, ulaw_silence
from ivr.audio._audioop import audioop
from ivr.providers.feed import feed_call_audio

RAW_ULAW = (".ulaw", ".mulaw", ".ul", ".raw")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stt",
        help="transcribe an audio file as if a caller said it",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("file", help="WAV, FLAC, or headerless 8 kHz mu-law (.ulaw)")
    p.add_argument("--realtime", action="store_true", help="feed the audio at the pace of a call")
    p.add_argument("--end-of-turn-ms", type=int, default=None, metavar="MS", help="[IVR_STT_END_OF_TURN_MS]")
    p.add_argument("--model", default=None, help="moonshine, tiny.en, base, or a faster-whisper model directory (default: moonshine where installed, else tiny.en) [IVR_STT_MODEL]")
    p.add_argument("--prompt", default=None, help="flow, none, or words to prime the recogniser with [IVR_STT_PROMPT]")
    p.add_argument("-v", "--verbose", action="store_true", help="log engine loading")
    p.set_defaults(func=run)


def read_as_phone_ulaw(path: str | Path) -> bytes:
    """Any supported file -> 8 kHz mu-law bytes, as a telephone line would carry it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in RAW_ULAW:
        return path.read_bytes()
    if suffix == ".flac":
        pcm, rate = _read_flac(path)
    else:
        pcm, rate = _read_wav(path)
    if rate not in SUPPORTED_RATES:
        raise SystemExit(f"ivr stt: {path}: {rate} Hz is not supported (use one of {SUPPORTED_RATES})")
    return pcm16_to_ulaw(resample(pcm, rate, 8000))


def _read_wav(path: Path) -> tuple[bytes, int]:
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as error:
        raise SystemExit(f"ivr stt: {path}: not a PCM WAV file ({error})") from None
    if width != 2:
        data = audioop.lin2lin(data, width, 2)
        if width == 1:  # 8-bit WAV is unsigned
            data = audioop.bias(data, 2, 0)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    elif channels != 1:
        raise SystemExit(f"ivr stt: {path}: {channels} channels; give a mono or stereo file")
    return data, rate


def _read_flac(path: Path) -> tuple[bytes, int]:
    try:
        import soundfile
    except ImportError:
        raise SystemExit("ivr stt: reading FLAC needs the soundfile package (pip install soundfile)") from None
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    return data.mean(axis=1).astype("<i2").tobytes(), rate


def run(args: argparse.Namespace) -> int:
    import logging

    from ivr.config import ConfigError, Settings
    from ivr.providers.registry import build

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    overrides = {"stt_end_of_turn_ms": args.end_of_turn_ms, "stt_model": args.model, "stt_prompt": args.prompt}
    try:
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        stt = build(settings).stt
    except ConfigError as error:
        print(f"ivr stt: {error}", file=sys.stderr)
        return 2
    ulaw = read_as_phone_ulaw(args.file)
    return asyncio.run(_transcribe(stt, ulaw, args.realtime))


async def _transcribe(stt, ulaw: bytes, realtime: bool) -> int:
    from ivr.providers.base import EndOfTurn, Final, Interim, SpeechStarted

    await stt.load()
    session = await stt.open()
    # A second of silence after the recording lets the turn end as it would on a call.
    audio = ulaw + ulaw_silence(8000)

    async def show() -> None:
        async for event in session:
            if isinstance(event, SpeechStarted):
                print(f"[{event.at_ms / 1000:7.2f} s]            speech started")
            elif isinstance(event, Interim):
                print(f"[{event.start_ms / 1000:7.2f} - {event.end_ms / 1000:6.2f} s] ({event.text})")
            elif isinstance(event, Final):
                print(f"[{event.start_ms / 1000:7.2f} - {event.end_ms / 1000:6.2f} s] {event.text}")
            elif isinstance(event, EndOfTurn):
                print(f"[{event.at_ms / 1000:7.2f} s]            end of turn: {event.text}")
            sys.stdout.flush()

    printer = asyncio.create_task(show())
    started = await feed_call_audio(session, audio, realtime)
    await printer
    elapsed = time.perf_counter() - started
    redecodes = getattr(stt, "redecodes", {})
    again = ", ".join([f"{n} {why}" for why, n in redecodes.items() if n]
                      + ([f"{stt.joins} joined with the speech after a short pause"] if getattr(stt, "joins", 0) else []))
    print(f"{len(ulaw) / 8000:.2f} s of audio in {elapsed:.2f} s" + (f"; decoded again: {again}" if again else ""), file=sys.stderr)
    return 0
