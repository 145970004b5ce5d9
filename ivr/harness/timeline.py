"""timeline.html: one self-contained page (inline script, no external assets) showing the call
on a timeline: both waveforms, caller turns, bot responses with their latency, barge-ins,
clears, marks and DTMF, with the call's audio embedded for playback when it is short."""

from __future__ import annotations

import base64
import io
from importlib.resources import files
from pathlib import Path

import numpy as np
import orjson

from ivr.audio import SAMPLE_RATE
from ivr.harness.record import CallRecord
from ivr.harness.wavout import heard_channels, write_call_wav

#: Envelope resolution: one (min, max) pair per bucket; at most this many buckets per channel.
BUCKET_MS = 10
MAX_BUCKETS = 20_000
#: Calls longer than this are drawn but their audio is not embedded (the page would be huge).
MAX_EMBED_SECONDS = 300


def envelope(pcm: np.ndarray, bucket: int) -> list[list[int]]:
    """Per bucket of samples, [min, max] scaled to -100..100."""
    n = len(pcm) // bucket * bucket
    if n == 0:
        return []
    blocks = pcm[:n].reshape(-1, bucket).astype(np.int32)
    lo = (blocks.min(axis=1) * 100 // 32768).tolist()
    hi = (blocks.max(axis=1) * 100 // 32767).tolist()
    return [list(p) for p in zip(lo, hi)]


def timeline_data(record: CallRecord, report: dict) -> dict:
    caller, bot = heard_channels(record)
    bucket_ms = max(BUCKET_MS, -(-len(caller) * 1000 // SAMPLE_RATE // MAX_BUCKETS))
    bucket = bucket_ms * SAMPLE_RATE // 1000
    audio = None
    if len(caller) <= MAX_EMBED_SECONDS * SAMPLE_RATE:
        buf = io.BytesIO()
        write_call_wav(record, buf)
        audio = "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "report": {k: v for k, v in report.items() if k != "bot"} | {"bot": {k: v for k, v in report["bot"].items() if k != "media"}},
        "bucket_ms": bucket_ms,
        "caller_env": envelope(caller, bucket),
        "bot_env": envelope(bot, bucket),
        "audio": audio,
    }


def render_timeline(record: CallRecord, report: dict) -> str:
    template = files("ivr.harness").joinpath("timeline.html").read_text(encoding="utf-8")
    data = orjson.dumps(timeline_data(record, report)).decode()
    # Inside <script>, "</" could end the element early: escape it.
    data = data.replace("</", "<\\/")
    title = f"{report['call']['name']} - ivr replay"
    title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return template.replace("__TITLE__", title).replace("__DATA__", data)


def write_timeline(record: CallRecord, report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_timeline(record, report), encoding="utf-8")
    return path
