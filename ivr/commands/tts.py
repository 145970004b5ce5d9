"""`ivr tts "TEXT" -o FILE.wav`: speak text with the configured engine, as the phone would play it.

The audio goes through the same path as a bot turn (streamed sentence by sentence, resampled to
8 kHz, mu-law framed); the WAV holds exactly what the caller would hear, as 8 kHz 16-bit PCM.
A `.ulaw` file name gives the raw mu-law bytes instead.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
import wave

from ivr.audio import PhoneEncoder, ulaw_to_pcm16


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tts", help="speak text into a WAV file as the phone would play it", description=__doc__.split("\n\n")[1])
    p.add_argument("text", help="what to say")
    p.add_argument("-o", "--output", help="WAV file (8 kHz, 16-bit) or .ulaw (raw mu-law) to write")
    p.add_argument("--play", action="store_true", help="play it (needs aplay)")
    p.add_argument("-v", "--verbose", action="store_true", help="log engine loading")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ivr.config import ConfigError, Settings
    from ivr.providers.registry import build

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.output and not args.play:
        print("ivr tts: give -o FILE.wav, --play, or both", file=sys.stderr)
        return 2
    if args.play and not shutil.which("aplay"):
        print("ivr tts: --play needs aplay (alsa-utils); write a file with -o instead", file=sys.stderr)
        return 2
    try:
        tts = build(Settings.from_env()).tts
    except ConfigError as error:
        print(f"ivr tts: {error}", file=sys.stderr)
        return 2
    ulaw, first_audio, elapsed = asyncio.run(speak(tts, args.text))
    seconds = len(ulaw) / 8000
    print(
        f"{seconds:.2f} s of audio; first audio after {first_audio * 1000:.0f} ms, "
        f"all in {elapsed:.2f} s (RTF {elapsed / max(seconds, 1e-9):.3f})",
        file=sys.stderr,
    )
    if args.output:
        if args.output.lower().endswith((".ulaw", ".mulaw", ".ul")):
            with open(args.output, "wb") as f:
                f.write(ulaw)
        else:
            with wave.open(args.output, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(ulaw_to_pcm16(ulaw))
    if args.play:
        subprocess.run(["aplay", "-q", "-t", "raw", "-f", "MU_LAW", "-r", "8000", "-c", "1", "-"], input=ulaw, check=False)
    return 0


async def speak(tts, text: str) -> tuple[bytes, float, float]:
    """Text -> (8 kHz mu-law as the phone plays it, seconds to first audio, seconds in all)."""
    await tts.load()
    started = time.perf_counter()
    stream = tts.stream()
    await stream.push(text)
    await stream.end()
    frames: list[bytes] = []
    encoder = None
    first_audio = None
    async for chunk in stream:
        if chunk.audio and first_audio is None:
            first_audio = time.perf_counter() - started
        if chunk.encoding == "ulaw":
            encoder = encoder or PhoneEncoder(8000)
            frames += encoder.push_ulaw(chunk.audio)
        else:
            encoder = encoder or PhoneEncoder(chunk.sample_rate)
            frames += encoder.push(chunk.audio)
    if encoder is not None:
        frames += encoder.flush()
    elapsed = time.perf_counter() - started
    return b"".join(frames), first_audio or elapsed, elapsed
