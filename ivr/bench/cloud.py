"""`ivr bench cloud`: ivr's own share of the response latency with the cloud adapters.

The three fakes from the test suite (tests/fakes, in a source checkout) and one `ivr serve` run as
separate processes on 127.0.0.1 (see ivr.bench.procs); this process replays a call at the server
as Twilio would. The fakes add fixed delays: Deepgram sends each final `--stt-ms` late, OpenAI its
first token `--llm-ms` late, ElevenLabs its first audio `--tts-ms` late. The caller asks a question
N times; every answer is new text (nothing from the prompt cache). For each answer

    ivr share = (first reply frame received by the caller - Deepgram final sent)
                - (OpenAI first token sent - its request received)
                - (ElevenLabs first audio sent - its first text received)

so what remains is ivr's own work between the providers: reading the final, the turn decision,
the request, the clause split, the TTS request, framing and sending, plus loopback transit. Every
timestamp is time.monotonic(), one clock for all the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import textwrap
from pathlib import Path

from ivr.audio import FRAME_MS
from ivr.bench.procs import Procs, cpu_steal, have_fakes, run_processes, start_fakes, start_server, steal_share
from ivr.bench.questions import percentile, question_call
from ivr.heap import freeze_startup_objects

#: A caller frame sent later than this marks the answer as measured by a stalled caller.
CALLER_LATE_MS = 5.0
#: The pieces of ivr's share, each between two timestamps of different processes.
STAGES = (
    "Deepgram final sent -> OpenAI request received",
    "first token sent -> ElevenLabs text received",
    "ElevenLabs audio sent -> caller gets the frame",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", type=int, default=30, help="answers to measure (default 30)")
    p.add_argument("--stt-ms", type=float, default=150, help="Deepgram fake: final delay (default 150)")
    p.add_argument("--llm-ms", type=float, default=300, help="OpenAI fake: first token delay (default 300)")
    p.add_argument("--tts-ms", type=float, default=150, help="ElevenLabs fake: first audio delay (default 150)")
    p.add_argument("--flux", action="store_true",
                   help="Deepgram Flux with preemptive replies: measure EndOfTurn -> first reply frame instead")


def run(args: argparse.Namespace) -> int:
    if not have_fakes():
        print("ivr bench cloud needs a source checkout (it starts the fakes in tests/fakes)", file=sys.stderr)
        return 2
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.run import replay
    from ivr.harness.sources import load_call

    def measure(procs: Procs, tmp: Path) -> int:
        flow, script = question_call(tmp, args.answers)
        fakes = start_fakes(procs, args.stt_ms, args.llm_ms, args.tts_ms, varied=True, timings_dir=tmp)
        flux = {"IVR_DEEPGRAM_MODEL": "flux-general-en", "IVR_DEEPGRAM_EAGER_EOT": "0.5"} if args.flux else {}
        _server, port = start_server(procs, fakes, flow, flux)
        plan = asyncio.run(load_call(script))
        freeze_startup_objects()  # the caller's own pauses would count against the server
        steal0 = cpu_steal()
        # Each question and answer takes about 8 s of call; the call must not end before the last.
        max_call_s = max(600.0, args.answers * 20.0)
        record = asyncio.run(replay(plan, ReplayOptions(url=f"ws://127.0.0.1:{port}/media", max_call_s=max_call_s)))
        steal = steal_share(steal0, cpu_steal())
        procs.stop_all()  # the fakes write their timings as they exit
        return _report(args, record, fakes.read_timings(), steal)

    return run_processes("ivr bench cloud", measure)


def _report(args: argparse.Namespace, record, timings: dict[str, dict], steal: float | None) -> int:
    if record.failed:
        print(f"ivr bench cloud: the call failed: {[e.detail for e in record.errors]}", file=sys.stderr)
        return 1
    if steal is not None:
        print(f"CPU time the host took from this machine (steal) during the call: {steal:.1%}")
    if args.flux:
        return _print_flux(args, flux_answers(record, timings))
    rows = match_answers(record, timings)
    if not rows:
        print("no answers could be matched to the fakes' timings", file=sys.stderr)
        return 1
    totals = [r["total"] for r in rows]
    shares = [r["share"] for r in rows]
    print(textwrap.dedent(f"""\
        cloud adapters, fakes on 127.0.0.1 with fixed delays: STT final +{args.stt_ms:.0f} ms, first token {args.llm_ms:.0f} ms, first audio {args.tts_ms:.0f} ms
        answers measured: {len(rows)} of {args.answers}
        from Deepgram's final to the first reply frame at the caller: median {statistics.median(totals):.1f} ms, p99 {percentile(totals, 99):.1f} ms
        ivr's own share (minus the fakes' LLM and TTS waits): median {statistics.median(shares):.1f} ms, p90 {percentile(shares, 90):.1f} ms, p99 {percentile(shares, 99):.1f} ms, max {max(shares):.1f} ms
        each answer's share, in order (ms): {' '.join(f'{v:.1f}' for v in shares)}
        where it went (median / p99 ms):"""))
    for name in STAGES:
        values = [r[name] for r in rows]
        print(f"  {name:<48} {statistics.median(values):6.1f} / {percentile(values, 99):6.1f}")
    slowest = max(rows, key=lambda r: r["share"])
    print("  the slowest answer: " + ", ".join(f"{slowest[n]:.1f}" for n in STAGES) + " ms")
    late = [r["share"] for r in rows if r["caller_late"] > CALLER_LATE_MS]
    shares_late = f" (their shares: {' '.join(f'{v:.1f}' for v in late)} ms)" if late else ""
    print(f"answers during which this process (the caller, which timestamps the reply frame) was itself more "
          f"than {CALLER_LATE_MS:g} ms late with a frame: {len(late)}{shares_late}")
    on_time = [r["share"] for r in rows if r["caller_late"] <= CALLER_LATE_MS]
    if late and on_time:
        # A late caller means this machine stalled as a whole (host steal, another process): the
        # server stalled with it. Both figures are printed; neither replaces the other.
        print(f"ivr's share over the {len(on_time)} answers the caller measured on time: median "
              f"{statistics.median(on_time):.1f} ms, p90 {percentile(on_time, 90):.1f} ms, p99 {percentile(on_time, 99):.1f} ms")
    return 0


def _frames_received(record) -> list[float]:
    """When the caller got each of the bot's media frames, on the monotonic clock."""
    return [record.monotonic_start + m.recv_ms / 1000 for m in record.playback.media]


def _caller_late(record, since: float, until: float) -> float:
    """How late (ms) this process sent its worst caller frame due between two monotonic times:
    when it is late, its own timestamps of received frames may be late too."""
    first = max(0, int((since - record.monotonic_start) * 1000 // FRAME_MS))
    last = int((until - record.monotonic_start) * 1000 // FRAME_MS) + 1
    return max(record.frame_lag_ms[first:last + 1], default=0.0)


def match_answers(record, timings: dict[str, dict]) -> list[dict]:
    """Line up each Deepgram final with the OpenAI request, the ElevenLabs context and the first
    reply frame that followed it; in ms."""
    media = _frames_received(record)
    requests = sorted(tuple(r) for r in timings["openai"]["requests"])
    contexts = sorted((c["first_text_at"], c["first_audio_at"]) for c in timings["elevenlabs"]["contexts"]
                      if c["first_text_at"] and c["first_audio_at"])
    rows = []
    for final, _text in timings["deepgram"]["finals_sent"]:
        llm = next((r for r in requests if r[0] >= final), None)
        frame = next((t for t in media if t >= final), None)
        if llm is None or frame is None or llm[1] > frame:
            continue
        ctx = next((c for c in contexts if llm[1] <= c[0] and c[1] <= frame), None)
        if ctx is None:
            continue
        total = frame - final
        share = total - (llm[1] - llm[0]) - (ctx[1] - ctx[0])
        stages = (llm[0] - final, ctx[0] - llm[1], frame - ctx[1])
        rows.append({"total": total * 1000, "share": share * 1000, **{n: v * 1000 for n, v in zip(STAGES, stages)},
                     "caller_late": _caller_late(record, final, frame)})
    return rows


def flux_answers(record, timings: dict[str, dict]) -> list[tuple[float, bool]]:
    """(EndOfTurn sent -> first reply frame at the caller, ms; whether the reply's request went
    out before the EndOfTurn, i.e. on Flux's EagerEndOfTurn) for each answered turn."""
    media = _frames_received(record)
    requests = sorted(r[0] for r in timings["openai"]["requests"])
    out = []
    for end_of_turn, _text in timings["deepgram"]["finals_sent"]:
        frame = next((t for t in media if t >= end_of_turn), None)
        if frame is None:
            continue
        request = max((r for r in requests if r <= frame), default=None)
        out.append(((frame - end_of_turn) * 1000, request is not None and request < end_of_turn))
    return out


def _print_flux(args: argparse.Namespace, rows: list[tuple[float, bool]]) -> int:
    if not rows:
        print("no answers could be matched to the fakes' timings", file=sys.stderr)
        return 1
    waits = [w for w, _ in rows]
    early = sum(1 for _, e in rows if e)
    print(textwrap.dedent(f"""        Deepgram Flux (EagerEndOfTurn at half the 500 ms end-of-turn silence), preemptive replies on;
        fakes: first token {args.llm_ms:.0f} ms, first audio {args.tts_ms:.0f} ms
        answers measured: {len(rows)} of {args.answers}; replies started on EagerEndOfTurn: {early}
        from Flux's EndOfTurn to the first reply frame at the caller: median {statistics.median(waits):.1f} ms, p99 {percentile(waits, 99):.1f} ms
        (a reply started only at EndOfTurn would need the whole {args.llm_ms + args.tts_ms:.0f} ms of the fakes plus ivr's share)"""))
    return 0
