"""Per-frame cost of the media path (`ivr bench codec`).

Inbound: one Twilio `media` message -> parsed event -> 160-byte frame -> 8 kHz PCM16.
Outbound: 20 ms of PCM16 at a TTS rate -> 8 kHz mu-law frame -> `media` JSON text; and the
same for audio that is already 8 kHz mu-law (a provider's ulaw_8000 output).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ivr.audio import FRAME_BYTES, Framer, PhoneEncoder, ulaw_to_pcm16
from ivr.telephony.twilio import StreamParser, StreamWriter, TwilioSender


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=20000, help="frames per measurement (default 20000)")
    p.add_argument("--repeat", type=int, default=5, help="measurements per path; the median is printed")


def _speech_like(rate: int, seconds: float) -> bytes:
    rng = np.random.default_rng(1)
    t = np.arange(int(rate * seconds)) / rate
    x = 6000 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + rng.normal(0, 800, t.size)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def _time(fn, n: int, repeat: int) -> float:
    """Median microseconds per call of fn(i) over `repeat` runs of n calls."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(runs)


def inbound(n: int, repeat: int) -> float:
    sender = TwilioSender("MZ" + "0" * 32, "CA" + "0" * 32, "AC" + "0" * 32)
    ulaw = bytes(np.random.default_rng(2).integers(0, 256, FRAME_BYTES, dtype=np.uint8))
    messages = [sender.media(ulaw, 20 * i) for i in range(n)]
    start = sender.start()

    def make():
        parser = StreamParser()
        parser.parse(start)
        framer = Framer()
        return parser, framer

    results = []
    for _ in range(repeat):
        parser, framer = make()
        t0 = time.perf_counter_ns()
        for m in messages:
            ev = parser.parse(m)
            for frame in framer.push(ev.payload):
                ulaw_to_pcm16(frame)
        results.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(results)


def outbound(rate: int, n: int, repeat: int) -> float:
    writer = StreamWriter("MZ" + "0" * 32)
    pcm = _speech_like(rate, 1.0)
    step = rate // 50 * 2
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    enc = PhoneEncoder(rate)

    def one(i: int) -> None:
        for frame in enc.push(chunks[i % len(chunks)]):
            writer.media(frame)

    return _time(one, n, repeat)


def outbound_ulaw(n: int, repeat: int) -> float:
    writer = StreamWriter("MZ" + "0" * 32)
    enc = PhoneEncoder(8000)
    ulaw = bytes(np.random.default_rng(3).integers(0, 256, FRAME_BYTES, dtype=np.uint8))

    def one(i: int) -> None:
        for frame in enc.push_ulaw(ulaw):
            writer.media(frame)

    return _time(one, n, repeat)


def run(args: argparse.Namespace) -> int:
    n, r = args.frames, args.repeat
    print(f"ivr bench codec --frames {n} --repeat {r}   (median of {r} runs, microseconds per 20 ms frame)")
    print(f"  inbound   media JSON -> event -> 160-byte frame -> PCM16 8 kHz : {inbound(n, r):7.2f} us")
    print(f"  outbound  mu-law 8 kHz (ulaw_8000 provider) -> media JSON      : {outbound_ulaw(n, r):7.2f} us")
    for rate in (16000, 22050, 24000, 48000):
        print(f"  outbound  PCM16 {rate / 1000:>5g} kHz -> 8 kHz mu-law frame -> media JSON : {outbound(rate, n, r):7.2f} us")
    return 0
