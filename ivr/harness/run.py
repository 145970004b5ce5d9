"""Replay one call and write what it measured: report.json, call.wav, timeline.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import CallPlan
from ivr.harness.record import CallRecord
from ivr.harness.report import BotText, build_report
from ivr.harness.sources import load_call
from ivr.harness.transcribe import Transcriber, add_bot_texts
from ivr.harness.tts import Synthesiser
from ivr.harness.wavout import write_call_wav


async def replay(plan: CallPlan, options: ReplayOptions) -> CallRecord:
    return await TwilioEmulator(plan, options).run()


@dataclass
class ReplayOutputs:
    record: CallRecord
    report: dict
    report_path: Path
    wav_path: Path
    html_path: Path


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def write_outputs(record: CallRecord, report: dict, out_dir: str | Path) -> ReplayOutputs:
    from ivr.harness.timeline import write_timeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return ReplayOutputs(
        record=record,
        report=report,
        report_path=write_report(report, out / "report.json"),
        wav_path=Path(write_call_wav(record, out / "call.wav")),
        html_path=write_timeline(record, report, out / "timeline.html"),
    )


async def replay_file(
    call: str | Path,
    options: ReplayOptions,
    out_dir: str | Path,
    *,
    channel: str | int = "left",
    synthesise: Synthesiser | None = None,
    bot_text: BotText | None = None,
    transcribe: Transcriber | None = None,
) -> ReplayOutputs:
    """Load CALL, replay it against `options.url`, and write report.json, call.wav, timeline.html
    into `out_dir`. The `ivr replay` and `ivr demo` commands are this plus printing."""
    plan = await load_call(call, channel=channel, synthesise=synthesise)
    record = await replay(plan, options)
    report = build_report(record, bot_text)
    if transcribe is not None and record.connected:
        await add_bot_texts(report, record, transcribe)
    return write_outputs(record, report, out_dir)
