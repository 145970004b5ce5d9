"""A replayed call that asks the same question N times: the shared workload of the provider
benchmarks (`ivr bench cloud`, `ivr bench tts-http`)."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "harness" / "samples"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def question_call(tmp: Path, answers: int) -> tuple[Path, Path]:
    """(flow file, call script) written in `tmp`: a one-line flow, and a caller who asks about the
    hours `answers` times, each once the bot has been silent 0.6 s."""
    flow = tmp / "flow.yaml"
    flow.write_text('greeting: "Hello."\nnodes: {main: {say: x}}\n')
    step = f"  - audio: {SAMPLES / 'hours-question.wav'}\n    text: q\n    after: bot_silent 0.6\n"
    plan = tmp / "call.yaml"
    plan.write_text("name: bench\nsteps:\n" + step * answers + "  - hangup:\n    after: bot_silent 1.0\n")
    return flow, plan
