"""The terminal summary of one replayed call: a turn-by-turn transcript with times."""

from __future__ import annotations


def _t(value: float) -> str:
    return f"{value / 1000:7.2f}s"


def _quoted(text: str | None, fallback: str) -> str:
    return f"\"{text}\"" if text else fallback


def format_summary(report: dict) -> str:
    call = report["call"]
    head = [
        f"call {call['name']} ({call['kind']}) -> {call['url']}  speed x{call['speed']:g}",
        f"  {call['duration_ms'] / 1000:.2f} s of call time in {call['wall_seconds']:.2f} s,"
        f" ended by {call['ended_by'] or '?'}" + ("  FAILED" if call["failed"] else ""),
    ]
    events: list[tuple[float, int, str]] = []  # (time, order within a time, line)
    greeting = report["greeting"]
    if greeting["bot_first_audio_ms"] is not None:
        events.append((greeting["bot_first_audio_ms"], 1, f"bot     {_quoted(greeting['bot_text'], '(greeting)')}"))
    for turn in report["turns"]:
        if not turn.get("caller_keys"):  # keys have their own `dtmf` lines
            events.append(
                (turn["caller_speech_start_ms"], 0,
                 f"caller  {_quoted(turn['caller_text'], '(speech)')}  until {turn['caller_speech_end_ms'] / 1000:.2f}s")
            )
        if turn["bot_first_audio_ms"] is not None:
            events.append(
                (turn["bot_first_audio_ms"], 1,
                 f"bot     {_quoted(turn['bot_text'], '(audio)')}  latency {turn['response_latency_ms']:.0f} ms")
            )
        else:
            events.append((turn["caller_speech_end_ms"], 2, "bot     (no answer before the next turn)"))
    for barge in report["barge_ins"]:
        heard = ""
        if barge["audible_stop_latency_ms"] is not None:
            heard = f"; heard quiet after {barge['audible_stop_latency_ms']:.0f} ms, for {barge['quiet_ms']:.0f} ms"
        if barge["clear_ms"] is None:
            events.append((barge["caller_speech_start_ms"], 1, f"barge-in: the bot sent no clear{heard}"))
        else:
            leak = f", {barge['frames_after_clear']} frames after it" if barge["frames_after_clear"] else ""
            events.append((barge["clear_ms"], 1, f"clear   barge-in stopped after {barge['latency_ms']:.0f} ms{leak}{heard}"))
    for d in report["dtmf"]:
        events.append((d["ms"], 0, f"dtmf    {d['digit']}"))
    for e in report["errors"]:
        events.append((e["ms"], 3, f"error   {e['kind']}: {e['detail']}"))
    lines = head + [f"{_t(t)}  {text}" for t, _, text in sorted(events, key=lambda e: (e[0], e[1]))]
    marks = report["marks"]
    if marks:
        played = sum(m["outcome"] == "played" for m in marks)
        cleared = sum(m["outcome"] == "cleared" for m in marks)
        lines.append(f"  marks: {len(marks)} ({played} played, {cleared} cleared, {len(marks) - played - cleared} pending)")
    if report["bot"]["repeated_ms"]:
        lines.append(f"  bot audio heard twice: {report['bot']['repeated_ms']:.0f} ms")
    lag = report["caller"]["frame_lag_ms"]
    if lag["n"]:
        lines.append(f"  caller frames: {lag['n']}, send lag p50 {lag['p50']} ms, p99 {lag['p99']} ms")
    return "\n".join(lines)
