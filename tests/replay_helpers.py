"""Call scripts and replays for end-to-end tests: write a YAML script, replay it as Twilio."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from ivr.harness.emulator import MarkEchoes, ReplayOptions
from ivr.harness.run import ReplayOutputs, replay_file

SAMPLES = Path(__file__).resolve().parent.parent / "ivr" / "harness" / "samples"


def script(tmp_path: Path, body: str) -> Path:
    """A call script from `body` (dedented); SAMPLES stands for the sample calls' folder."""
    path = tmp_path / "call.yaml"
    path.write_text(textwrap.dedent(body).replace("SAMPLES", str(SAMPLES)))
    return path


def run(url: str, path: Path, out: Path, speed: float = 1.0, max_call_s: float = 120, marks: str = "on") -> ReplayOutputs:
    """Replay `path` against the media stream at `url`; reports go to `out`. Real time by default:
    the bot paces its audio on its own clock, as it must for Twilio."""
    options = ReplayOptions(url=url, speed=speed, max_call_s=max_call_s, marks=MarkEchoes.parse(marks))
    return asyncio.run(replay_file(path, options, out))
