"""`ivr bench engines`: the embedded engines' figures on this machine.

- STT word error rate on the sample set after the phone-line round trip (8 kHz, mu-law);
- STT real-time factor and end-of-speech -> final transcript latency (audio fed in real time);
- STT words written per minute of noise that is not speech (`ivr.bench.noise`);
- TTS time to first audio and real-time factor;
- VAD microseconds per 20 ms frame, and its onset error on phone-band vs wideband audio;
- how many concurrent calls the engines sustain with response latency p50 under the target:
  N simulated callers each say an utterance in real time; response latency is end of speech ->
  final transcript -> first TTS audio of the reply. N grows until the p50 passes the target.

The sample set is `tests/samples` of a source checkout (`--samples DIR`); without it, the
utterances are synthesised with the local TTS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ivr.audio import FRAME_BYTES, pcm16_to_ulaw, resample, ulaw_silence, ulaw_to_pcm16
from ivr.providers.feed import feed_call_audio
from ivr.providers.local_stt import TINY

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


# --- shared with the tests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    text: str
    ulaw: bytes  # 8 kHz mu-law, as from a phone line
    #: The node of the bench's flow (`flow_prompt`) at which a caller says it ("": the menu).
    node: str = ""


#: Written forms a recogniser may choose for a spoken word (as Whisper's own English normaliser).
#: British spellings as American ones, as that normaliser does (Moonshine writes "metres").
SPELLINGS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay", "metres": "meters", "metre": "meter"}


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation; a number, in words or numerals, becomes its digits,
    one word each ("4572", "four five seven two" and "forty five seventy two" -> four five seven
    two; "10" and "ten" -> one zero), so that the way a number is written is no error."""
    from ivr.flows.digits import TEENS, TENS, UNITS, spoken_digits

    number_words = {*UNITS, *TEENS, *TENS, "hundred", "thousand"} - {"o", "oh"}
    words: list[str] = []
    run: list[str] = []  # a number being read

    def flush() -> None:
        if run:
            words.extend(DIGIT_WORDS[int(d)] for d in spoken_digits(" ".join(run)))
            run.clear()

    for token in re.findall(r"[a-z0-9']+", text.lower().replace("-", " ")):
        token = token.strip("'")
        if token.isdigit() or token in number_words:
            run.append(token)
        elif token:
            flush()
            words.append(SPELLINGS.get(token, token))
    flush()
    return words


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)], len(ref)


def phone_line(pcm: bytes, rate: int) -> bytes:
    """PCM at any supported rate -> 8 kHz mu-law, what a telephone line carries."""
    return pcm16_to_ulaw(resample(pcm, rate, 8000))


def load_samples(directory: str | Path) -> list[Sample]:
    directory = Path(directory)
    samples = []
    for line in (directory / "transcripts.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        if not line.strip():
            continue
        name, text = line.split("\t", 1)
        path = directory / name
        if path.suffix == ".ulaw":
            ulaw = path.read_bytes()
        else:
            with wave.open(str(path), "rb") as w:
                ulaw = phone_line(w.readframes(w.getnframes()), w.getframerate())
        samples.append(Sample(name, text, ulaw))
    return samples


async def transcribe_call(stt, ulaw: bytes, realtime: bool = False, tail_ms: int = 1000, expected: tuple[str, ...] = ()):
    """Feed `ulaw` (+ silence) to a new session in 20 ms frames; returns (events, end_of_turn wall
    times by event index, wall time at which the audio clock passed the last speech).
    `expected`: the phrases the session is told the caller is likely to say."""
    session = await stt.open()
    if expected and hasattr(session, "expect"):
        session.expect(expected)
    events: list = []
    stamps: list[float] = []

    async def collect() -> None:
        async for event in session:
            events.append(event)
            stamps.append(time.perf_counter())

    reader = asyncio.create_task(collect())
    audio = ulaw + ulaw_silence(8 * tail_ms)
    started = await feed_call_audio(session, audio, realtime)
    await reader
    return events, stamps, started


# --- the benchmark ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", default="tests/samples", help="sample directory with transcripts.tsv")
    parser.add_argument("--target-ms", type=int, default=1200, help="response latency p50 target")
    parser.add_argument("--max-calls", type=int, default=16, help="stop the capacity search here")
    parser.add_argument("--rounds", type=int, default=3, help="utterances per simulated caller")
    parser.add_argument("--skip-capacity", action="store_true", help="skip the concurrent-calls search")
    parser.add_argument(
        "--stt-variants",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="WER and latency of other decoding choices and models (comma list, or all): " + ", ".join(STT_VARIANTS),
    )
    parser.add_argument("--timed-clips", type=int, default=3, metavar="N",
                        help="--stt-variants: clips of each set fed in real time for the final-transcript latency")
    parser.add_argument("--paused", default="tests/samples/paused",
                        help="paused callers (transcripts.tsv with pauses_ms) for the end-of-turn figures")


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from ivr.config import Settings
    from ivr.providers.registry import build

    providers = build(Settings.from_env())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} before the run (other work skews every figure)")
    t = time.perf_counter()
    await providers.load()
    print(f"engines loaded in {time.perf_counter() - t:.2f} s")
    stt, tts, vad = providers.stt, providers.tts, providers.vad

    samples = _samples(args.samples, tts)
    print(f"samples: {len(samples)} ({sum(len(s.ulaw) for s in samples) / 8000:.1f} s of speech)")

    sets = _stt_sets(args.samples)
    for name, speech in sets.items():
        await _bench_wer(stt, speech, name)
    if not sets:
        await _bench_wer(stt, samples)
    noise = _noise_set(sets)
    figure = await _noise_words(stt, noise)
    print(f"STT words written for noise the VAD let through: {figure}")
    await _bench_stt_latency(stt, samples)
    if args.stt_variants:
        await _bench_stt_variants(stt, sets or {"samples": samples}, args.stt_variants, noise, args.timed_clips)
    await _bench_turns(stt, args.paused)
    await _bench_tts(tts)
    if vad is not None:
        _bench_vad(vad, samples, args.samples)
    if not args.skip_capacity:
        await _bench_capacity(stt, tts, samples, args)
    return 0


def _samples(directory: str, tts) -> list[Sample]:
    if (Path(directory) / "transcripts.tsv").is_file():
        return load_samples(directory)
    print(f"no {directory}/transcripts.tsv: synthesising the samples")
    texts = ["What time do you open on Saturday?", "My order number is four five seven two.",
             "Can I speak to a real person?", "Hi, I'd like to check on my order please."]  # fmt: skip
    return [Sample(f"tts{i}", text, phone_line(tts.synthesize(text), tts.sample_rate)) for i, text in enumerate(texts)]


def _turn_text(events) -> str:
    from ivr.providers.base import EndOfTurn

    return " ".join(e.text for e in events if isinstance(e, EndOfTurn) and e.text)


async def _bench_wer(stt, samples: list[Sample], label: str = "") -> None:
    errors, words, elapsed = await _wer(stt, samples)
    audio_s = sum(len(s.ulaw) for s in samples) / 8000
    what = f"{label}, {len(samples)} clips, " if label else ""
    print(f"STT WER ({what}phone line, 8 kHz mu-law): {100 * errors / max(words, 1):.1f} % ({errors}/{words} words)")
    print(f"STT RTF (fed as fast as it goes): {elapsed / audio_s:.3f}")


async def _wer(stt, samples: list[Sample], show_errors: bool = False, expect=None) -> tuple[int, int, float]:
    """`expect(sample)`: the phrases the recogniser is told to expect for it (None: none)."""
    errors = words = 0
    start = time.perf_counter()
    for sample in samples:
        events, _, _ = await transcribe_call(stt, sample.ulaw, expected=expect(sample) if expect else ())
        text = _turn_text(events)
        e, n = word_errors(sample.text, text)
        errors, words = errors + e, words + n
        if e and show_errors:
            print(f"      {sample.name}: {sample.text!r} -> {text!r}")
    return errors, words, time.perf_counter() - start


def _stt_sets(directory: str) -> dict[str, list[Sample]]:
    from ivr.bench.stt_sets import stt_sets

    return stt_sets(directory) if Path(directory).is_dir() else {}


#: The weight of the bias variants: IVR_STT_BIAS's recommended value (benchmarks/README.md).
BIAS_WEIGHT = 1.5

#: Decoding choices and models measured side by side by --stt-variants: name -> (model, options).
#: "default" is the engine IVR_STT_MODEL gives (empty: Moonshine where installed); Whisper's
#: decoding choices are measured on tiny.en. "today" is tiny.en's decoder before short
#: transcripts were decoded again.
STT_VARIANTS: dict[str, tuple[str | None, dict]] = {
    "today": (TINY, {"min_words_per_s": 0, "prompt": "", "pre_roll_into_silence": False, "pad_with_silence": False}),
    "featurepad": (TINY, {"pad_with_silence": False}),
    "redecode30s": (TINY, {"redecode_window_ms": 0}),
    "default": (None, {}),
    "tiny": (TINY, {}),
    "noprompt": (TINY, {"prompt": ""}),
    "flowprompt": (TINY, {"prompt": "FLOW"}),
    "beam5": (TINY, {"beam_size": 5}),
    "fallback": (TINY, {"fallback_temperatures": (0.2, 0.4, 0.6, 0.8, 1.0)}),
    "window30s": (TINY, {"window_pad_ms": 0}),
    "pad3s": (TINY, {"window_pad_ms": 3000}),
    "preroll400": (TINY, {"pre_roll_ms": 400}),
    "base": ("base", {}),
    "base-beam5": ("base", {"beam_size": 5}),
    # CTranslate2's arithmetic (not a decoding option: given to the engine, not SttOptions).
    "float32": (TINY, {"compute_type": "float32"}),
    "int8f32": (TINY, {"compute_type": "int8_float32"}),
    "base-float32": ("base", {"compute_type": "float32"}),
    # Moonshine base English (IVR_STT_MODEL=moonshine): Whisper's options do not apply.
    "moonshine": ("moonshine", {}),
    # Each stretch decoded alone, however short the pause that ended it (before joins).
    "nojoin": (TINY, {"join_pause_ms": 0}),
    "moonshine-nojoin": ("moonshine", {"join_pause_ms": 0}),
    # Moonshine favouring what the flow expects at each clip's node (IVR_STT_BIAS); a weight of
    # its own as "moonshine-bias@2". "biasflow": every node's phrases at once, wherever the caller is.
    "moonshine-bias": ("moonshine", {"bias": BIAS_WEIGHT, "expect": "node"}),
    "moonshine-biasflow": ("moonshine", {"bias": BIAS_WEIGHT, "expect": "flow"}),
}


def _noise_set(sets: dict[str, list[Sample]]) -> list[Sample]:
    from ivr.bench.noise import noise_set

    return noise_set(sets.get("recorded"))


async def _noise_words(stt, noise: list[Sample]) -> str:
    """Words per minute of noise, the sounds that are not speech apart from babble (other people's
    speech behind the caller, where words are real if unwanted)."""
    from ivr.providers.local_stt import word_count

    counts = {"noise": [0, 0.0], "babble": [0, 0.0]}
    written = []
    for sample in noise:
        events, _, _ = await transcribe_call(stt, sample.ulaw)
        text = _turn_text(events)
        kind = counts["babble" if "babble" in sample.name else "noise"]
        kind[0] += word_count(text)
        kind[1] += len(sample.ulaw) / 8000
        if text and "babble" not in sample.name:
            written.append(f"{sample.name.removeprefix('noise/')}: {text!r}")
    (words, seconds), (babble, babble_s) = counts["noise"], counts["babble"]
    figure = f"{60 * words / max(seconds, 1e-9):.1f} words/min of noise ({words} in {seconds:.0f} s)"
    if babble_s:
        figure += f", babble {60 * babble / babble_s:.0f} words/min"
    if written and os.environ.get("IVR_BENCH_SHOW_ERRORS") == "1":
        figure += "".join(f"\n      {w}" for w in written)
    return figure


async def _bench_stt_variants(
    stt, sets: dict[str, list[Sample]], names: str, noise: list[Sample] = (), timed_clips: int = 3
) -> None:
    """Each variant on every set (WER, fed as fast as it goes) and on a few clips in real time
    (end of speech -> final transcript), the default measured in the same run for comparison."""
    from dataclasses import replace

    from ivr.providers.local_stt import embedded_stt

    chosen = list(STT_VARIANTS) if names == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n.partition("@")[0] not in STT_VARIANTS]
    if unknown:
        print(f"unknown STT variants: {', '.join(unknown)} (known: {', '.join(STT_VARIANTS)})")
        return
    timed = [s for speech in sets.values() for s in speech[:timed_clips]]
    print(f"STT variants (WER per set; end of speech -> final transcript over {len(timed)} clips fed in real time):")
    for name in chosen:
        base, _, weight = name.partition("@")
        model, overrides = STT_VARIANTS[base]
        if overrides.get("prompt") == "FLOW":
            overrides = dict(overrides, prompt=flow_prompt())
        overrides = dict(overrides)
        if weight:
            overrides["bias"] = float(weight)
        compute_type = overrides.pop("compute_type", stt.compute_type)
        expect = flow_expectations(overrides.pop("expect", ""))
        try:
            engine = embedded_stt(
                model_path=model or stt.model_path,
                vad=stt.vad,
                options=replace(stt.options, **overrides),
                workers=stt.workers,
                cpu_threads=stt.cpu_threads,
                compute_type=compute_type,
            )
            await engine.load()
        except Exception as error:  # a model whose package is not installed
            print(f"  {name:11s} not measured: {error}")
            continue
        figures = []
        busy = audio_s = 0.0
        for set_name, speech in sets.items():
            errors, words, elapsed = await _wer(engine, speech, show_errors=os.environ.get("IVR_BENCH_SHOW_ERRORS") == "1", expect=expect)
            figures.append(f"{set_name} {100 * errors / max(words, 1):.1f} % ({errors}/{words})")
            busy, audio_s = busy + elapsed, audio_s + sum(len(s.ulaw) for s in speech) / 8000
        figures.append(f"RTF {busy / max(audio_s, 1e-9):.3f}")
        to_final = []
        for sample in timed:
            to_final += _final_latency(*await transcribe_call(engine, sample.ulaw, realtime=True, expected=expect(sample) if expect else ()))
        latency = f"final p50 {1000 * statistics.median(to_final):.0f} ms" if to_final else "no finals"
        redecodes = sum(engine.redecodes.values())
        noise_figure = f"; {await _noise_words(engine, noise)}" if noise else ""
        print(f"  {name:11s} " + "; ".join(figures) + f"; {latency}; re-decoded {redecodes}; joined {engine.joins}"
              + noise_figure)


def flow_prompt() -> str:
    from ivr.flows import load_flow, prompt_words

    return prompt_words(load_flow())


def flow_expectations(how: str):
    """What the recogniser is told to expect for a clip of the bench's flow: "node", the phrases of
    the clip's node (the menu, `main`, when it has none); "flow", every node's; "": None."""
    from ivr.flows import expected_phrases, load_flow

    if not how:
        return None
    flow = load_flow()
    if how == "flow":
        everything = tuple(dict.fromkeys(p for node in flow.nodes.values() for p in expected_phrases(flow, node)))
        return lambda sample: everything
    return lambda sample: expected_phrases(flow, flow.nodes[sample.node or "main"])


def _final_latency(events, stamps, started) -> list[float]:
    from ivr.providers.base import EndOfTurn, Final

    turns = [e for e in events if isinstance(e, EndOfTurn)]
    finals = [s for e, s in zip(events, stamps) if isinstance(e, Final)]
    if not (turns and finals):
        return []
    # From the end of the last speech: a clip the engine took as several turns (a pause longer
    # than its end-of-turn silence) is not charged the time spent on its later speech.
    return [finals[-1] - (started + turns[-1].at_ms / 1000)]


async def _bench_stt_latency(stt, samples: list[Sample]) -> None:
    from ivr.providers.base import EndOfTurn, Final

    to_final, to_turn = [], []
    for sample in samples:
        events, stamps, started = await transcribe_call(stt, sample.ulaw, realtime=True)
        turns = [(e, s) for e, s in zip(events, stamps) if isinstance(e, EndOfTurn)]
        finals = [s for e, s in zip(events, stamps) if isinstance(e, Final)]
        if turns and finals:
            turn, turn_at = turns[-1]
            # The wall-clock moment the caller stopped speaking, from the audio clock.
            speech_end = started + turn.at_ms / 1000
            to_final.append(finals[-1] - speech_end)
            to_turn.append(turn_at - speech_end)
    if to_final:
        print(
            f"STT end of speech -> final transcript: median {1000 * statistics.median(to_final):.0f} ms "
            f"(max {1000 * max(to_final):.0f}); -> end of turn: median {1000 * statistics.median(to_turn):.0f} ms "
            f"(end-of-turn silence {stt.options.end_of_turn_ms} ms"
            + (", then the turn model)" if hasattr(stt, "turn_options") else ")")
        )


async def _bench_turns(stt, directory: str) -> None:
    from ivr.bench.turns import load_paused, median, paused_turns

    calls = load_paused(directory)
    if not calls:
        print(f"no paused callers in {directory}: end-of-turn figures skipped")
        return
    model = "Smart Turn v3 + last words" if hasattr(stt, "turn_options") else f"timer only ({stt.options.end_of_turn_ms} ms)"
    result = await paused_turns(stt, calls)
    n, cut = result["calls"], result["cut"]
    print(f"end of turn ({model}): {len(cut)} of {n} paused callers cut off mid-sentence"
          + (f" ({', '.join(cut)})" if cut else ""))
    decisions = result["decisions"]
    if decisions:
        asked = [d for d in decisions if d.probability is not None]
        print(f"  turn model: {len(decisions)} decisions ({len(asked)} asked the model), model time median {median([d.compute_ms for d in asked])}"
              f" (max {max((d.compute_ms for d in asked), default=0):.0f} ms); candidate end -> decision"
              f" median {median([d.wait_ms for d in decisions])}; judged finished {sum(d.complete for d in decisions)},"
              f" held {sum(not d.complete for d in decisions)} (by the last words {sum(d.unfinished_text for d in decisions)})")


async def _bench_tts(tts) -> None:
    sentence = "Thanks for calling Sunrise Bakery, we're open Tuesday to Sunday from seven until three."
    firsts, rtfs = [], []
    for _ in range(3):
        stream = tts.stream()
        start = time.perf_counter()
        await stream.push(sentence)
        await stream.end()
        first, samples = None, 0
        async for chunk in stream:
            if chunk.audio and first is None:
                first = time.perf_counter() - start
            samples += len(chunk.audio) // 2
        elapsed = time.perf_counter() - start
        firsts.append(first or elapsed)
        rtfs.append(elapsed / (samples / tts.sample_rate))
    print(f"TTS time to first audio (14 words): median {1000 * statistics.median(firsts):.0f} ms; "
          f"RTF {statistics.median(rtfs):.3f}")


def _bench_vad(vad_engine, samples: list[Sample], directory: str) -> None:
    detector = vad_engine.create(sample_rate=8000)
    pcm = b"".join(ulaw_to_pcm16(s.ulaw) for s in samples)
    frames = [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]
    start = time.perf_counter()
    for frame in frames:
        detector.process(frame)
    per_frame = (time.perf_counter() - start) / len(frames)
    print(f"VAD: {per_frame * 1e6:.0f} µs per 20 ms frame (8 kHz in, upsampled to the model's 16 kHz)")
    _vad_onsets(vad_engine, directory)


def speech_onset_ms(pcm: bytes, rate: int, level: float = 0.1) -> int:
    """Where speech starts in a clean recording: the first 10 ms whose RMS passes `level` of the
    loudest 10 ms."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    block = rate // 100
    rms = np.sqrt((x[: len(x) // block * block].reshape(-1, block) ** 2).mean(axis=1))
    return int(np.argmax(rms > level * rms.max())) * 10


def _vad_onsets(vad_engine, directory: str) -> None:
    paths = sorted(Path(directory).glob("*.wav")) if Path(directory).is_dir() else []
    if not paths:
        return
    lead = 700
    errors = {"8 kHz phone line": [], "16 kHz wideband": []}
    for path in paths:
        with wave.open(str(path), "rb") as w:
            pcm, rate = w.readframes(w.getnframes()), w.getframerate()
        truth = lead + speech_onset_ms(pcm, rate)
        wide = resample(pcm, rate, 16000)
        for label, audio, r in (
            ("16 kHz wideband", wide, 16000),
            ("8 kHz phone line", ulaw_to_pcm16(phone_line(pcm, rate)), 8000),
        ):
            audio = b"\x00\x00" * (r * lead // 1000) + audio + b"\x00\x00" * r
            detector = vad_engine.create(sample_rate=r)
            step = r // 50 * 2
            events = [e for i in range(0, len(audio), step) for e in detector.process(audio[i : i + step])]
            starts = [e.at_ms for e in events if e.kind == "speech_start"]
            if starts:
                errors[label].append(starts[0] - truth)
    for label, errs in errors.items():
        if errs:
            print(f"VAD onset error, {label}: " + ", ".join(f"{e:+d} ms" for e in errs))


async def _bench_capacity(stt, tts, samples: list[Sample], args: argparse.Namespace) -> None:
    target = args.target_ms / 1000
    best = 0
    for n in range(1, args.max_calls + 1):
        latencies = await _simulate_calls(stt, tts, samples, n, args.rounds)
        p50 = statistics.median(latencies)
        p90 = sorted(latencies)[int(0.9 * (len(latencies) - 1))]
        print(f"  {n:2d} concurrent calls: response latency p50 {1000 * p50:.0f} ms, p90 {1000 * p90:.0f} ms")
        if p50 >= target:
            break
        best = n
    print(f"concurrent calls with response p50 under {args.target_ms} ms: {best}")


async def _simulate_calls(stt, tts, samples: list[Sample], calls: int, rounds: int) -> list[float]:
    """Each caller's line carries audio in real time, silence unless the caller speaks. A caller
    says an utterance, waits for the bot's reply (TTS), listens to it, and speaks again."""
    from ivr.providers.base import EndOfTurn

    reply = "Thanks, I can help with that. Is there anything else?"
    latencies: list[float] = []

    async def caller(k: int) -> None:
        session = await stt.open()
        to_say: asyncio.Queue = asyncio.Queue()
        turns: asyncio.Queue = asyncio.Queue()
        clock = time.perf_counter()

        async def line() -> None:
            fed, pending = 0, b""
            while True:
                if not pending and not to_say.empty():
                    pending = to_say.get_nowait()
                frame, pending = (pending[:FRAME_BYTES] or ulaw_silence(FRAME_BYTES)), pending[FRAME_BYTES:]
                await session.send(frame)
                fed += len(frame)
                await asyncio.sleep(max(0.0, clock + fed / 8000 - time.perf_counter()))

        async def listen() -> None:
            async for event in session:
                if isinstance(event, EndOfTurn) and event.text:
                    turns.put_nowait(event)

        tasks = [asyncio.create_task(line()), asyncio.create_task(listen())]
        await asyncio.sleep(0.137 * k)  # callers do not all speak at the same moment
        try:
            for r in range(rounds):
                to_say.put_nowait(samples[(k + r) % len(samples)].ulaw)
                event = await asyncio.wait_for(turns.get(), 60)
                speech_end_wall = clock + event.at_ms / 1000
                stream = tts.stream()
                await stream.push(reply)
                await stream.end()
                first, seconds = None, 0.0
                async for chunk in stream:
                    if chunk.audio and first is None:
                        first = time.perf_counter()
                    seconds += len(chunk.audio) / 2 / chunk.sample_rate
                latencies.append((first or time.perf_counter()) - speech_end_wall)
                await asyncio.sleep(seconds)  # the caller listens to the reply
        finally:
            for task in tasks:
                task.cancel()
            await session.aclose()

    await asyncio.gather(*(caller(k) for k in range(calls)))
    return latencies
