"""Per-frame cost of the media path (`ivr bench codec`).

Inbound: one Twilio `media` message -> parsed event -> 160-byte frame -> 8 kHz PCM16 (and
16 kHz, for a recogniser that takes it).
Outbound: 20 ms of PCM16 at a TTS rate -> 8 kHz mu-law frame -> `media` JSON text; and the
same for audio that is already 8 kHz mu-law (a provider's ulaw_8000 output).
Resampling alone: `ivr.audio.Resampler` beside soxr's stream resampler as pipecat uses it
(`ResampleStream`, VHQ, int16) on the same 20 ms frames, timed in alternating batches so that
both see the same machine, with the audio each holds back.

Times are the thread's CPU time, not wall time: on a shared machine a benchmark that is
descheduled would otherwise be charged for other processes' work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ivr.audio import FRAME_BYTES, Framer, PhoneEncoder, Resampler, group_delay_ms, ulaw_to_pcm16
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
        t0 = time.thread_time_ns()
        for i in range(n):
            fn(i)
        runs.append((time.thread_time_ns() - t0) / n / 1000)
    return statistics.median(runs)


def inbound(n: int, repeat: int, rate: int = 8000) -> float:
    sender = TwilioSender("MZ" + "0" * 32, "CA" + "0" * 32, "AC" + "0" * 32)
    ulaw = bytes(np.random.default_rng(2).integers(0, 256, FRAME_BYTES, dtype=np.uint8))
    messages = [sender.media(ulaw, 20 * i) for i in range(n)]
    start = sender.start()

    results = []
    for _ in range(repeat):
        parser = StreamParser()
        parser.parse(start)
        framer = Framer()
        resample = Resampler(8000, rate).process
        t0 = time.thread_time_ns()
        for m in messages:
            ev = parser.parse(m)
            for frame in framer.push(ev.payload):
                resample(ulaw_to_pcm16(frame))
        results.append((time.thread_time_ns() - t0) / n / 1000)
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


#: Conversions timed beside soxr: TTS rates to the phone's 8 kHz, and 8 kHz up to what a
#: wideband recogniser or a VAD takes.
RESAMPLE_PAIRS = ((24000, 8000), (8000, 16000), (16000, 8000), (22050, 8000), (48000, 8000))


def _frames(rate: int, seconds: float = 2.0) -> list[bytes]:
    pcm = _speech_like(rate, seconds)
    step = rate // 50 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]


def resample_vs_soxr(in_rate: int, out_rate: int, n: int, repeat: int, quality: str = "VHQ") -> dict | None:
    """Microseconds per 20 ms frame of ours and of soxr.ResampleStream, bytes in to bytes out.

    The two run in alternating batches (order swapped every round), so a busy machine slows
    both alike; the ratio is the median of the rounds' ratios. Hold-back is how far the output
    trails the input after each frame (ms of output owed), beyond the filter's own delay for
    ours; soxr's includes its block buffering.
    """
    try:
        import soxr
    except ImportError:
        return None
    frames = _frames(in_rate)
    ours = Resampler(in_rate, out_rate)
    theirs = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def run_ours(batch):
        process = ours.process
        for f in batch:
            process(f)

    def run_soxr(batch):
        chunk = theirs.resample_chunk
        for f in batch:
            chunk(np.frombuffer(f, dtype="<i2")).tobytes()

    batch = frames * max(1, 200 // len(frames))
    rounds = max(repeat, n // len(batch))
    t_ours, t_soxr, ratios = [], [], []
    for i in range(rounds):
        timed = {}
        for name, fn in ((("ours", run_ours), ("soxr", run_soxr)) if i % 2 == 0 else (("soxr", run_soxr), ("ours", run_ours))):
            t0 = time.thread_time_ns()
            fn(batch)
            timed[name] = (time.thread_time_ns() - t0) / len(batch) / 1000
        t_ours.append(timed["ours"])
        t_soxr.append(timed["soxr"])
        ratios.append(timed["ours"] / timed["soxr"])
    return {
        "ours": statistics.median(t_ours), "soxr": statistics.median(t_soxr), "ratio": statistics.median(ratios),
        "ours_hold": _hold_back(lambda f, r=Resampler(in_rate, out_rate): r.process(f), frames, in_rate, out_rate),
        "soxr_hold": _hold_back(lambda f, s=soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality):
                                s.resample_chunk(np.frombuffer(f, dtype="<i2")).tobytes(), frames, in_rate, out_rate),
    }


def _hold_back(process, frames: list[bytes], in_rate: int, out_rate: int) -> tuple[float, float]:
    """(median, max) ms of output owed after each frame: input so far at the output rate - output so far."""
    owed, n_in, n_out = [], 0, 0
    for f in frames:
        n_in += len(f) // 2
        n_out += len(process(f)) // 2
        owed.append((n_in * out_rate / in_rate - n_out) / out_rate * 1000)
    return statistics.median(owed), max(owed)


def run(args: argparse.Namespace) -> int:
    n, r = args.frames, args.repeat
    print(f"ivr bench codec --frames {n} --repeat {r}   (median of {r} runs, microseconds per 20 ms frame)")
    print(f"  inbound   media JSON -> event -> 160-byte frame -> PCM16 8 kHz : {inbound(n, r):7.2f} us")
    print(f"  inbound   media JSON -> event -> 160-byte frame -> PCM16 16 kHz: {inbound(n, r, 16000):7.2f} us")
    print(f"  outbound  mu-law 8 kHz (ulaw_8000 provider) -> media JSON      : {outbound_ulaw(n, r):7.2f} us")
    for rate in (16000, 22050, 24000, 48000):
        print(f"  outbound  PCM16 {rate / 1000:>5g} kHz -> 8 kHz mu-law frame -> media JSON : {outbound(rate, n, r):7.2f} us")
    print()
    print("resampling alone, 20 ms frames, bytes in -> bytes out, beside soxr.ResampleStream (int16) in alternating")
    print("batches; ivr / soxr is the median of the batches' ratios. Held back: ms of output owed after a frame,")
    print("median / max (ivr's own filter delay, which every sample has, in brackets).")
    print("| conversion | ivr us/frame | soxr VHQ us/frame | ivr / soxr VHQ | soxr HQ us/frame | ivr / soxr HQ "
          "| ivr held back ms | soxr VHQ held back ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in RESAMPLE_PAIRS:
        vhq = resample_vs_soxr(a, b, n, r, "VHQ")
        if vhq is None:
            print("(soxr is not installed: pip install soxr for the comparison)")
            break
        hq = resample_vs_soxr(a, b, n, r, "HQ")
        print(f"| {a / 1000:g} -> {b / 1000:g} kHz | {vhq['ours']:.2f} | {vhq['soxr']:.2f} | {vhq['ratio']:.2f} "
              f"| {hq['soxr']:.2f} | {hq['ratio']:.2f} "
              f"| {vhq['ours_hold'][0]:.1f} / {vhq['ours_hold'][1]:.1f} ({group_delay_ms(a, b):.2f}) "
              f"| {vhq['soxr_hold'][0]:.1f} / {vhq['soxr_hold'][1]:.1f} |")
    return 0
