"""Replay one call and write what it measured: report.json, call.wav, timeline.html."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import CallPlan
from ivr.harness.record import CallRecord
from ivr.harness.report import BotText, build_report
from ivr.harness.wavout import write_call_wav


async def replay(plan: CallPlan, options: ReplayOptions) -> CallRecord:
    return await TwilioEmulator(plan, options).run()


@dataclass
class ReplayOutputs:
    report: dict
    report_path: Path
    wav_path: Path
    html_path: Path


def write_outputs(record: CallRecord, out_dir: str | Path, bot_text: BotText | None = None) -> ReplayOutputs:
    from ivr.harness.timeline import write_timeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(record, bot_text)
    report_path = out / "report.json"
    report_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    wav_path = write_call_wav(record, out / "call.wav")
    html_path = write_timeline(record, report, out / "timeline.html")
    return ReplayOutputs(report, report_path, wav_path, html_path)
