"""`ivr replay` and `ivr load` from the command line, against the fake bot."""

from __future__ import annotations

import asyncio
import json

import soundfile

from fakebot import FakeBot
from ivr.cli import main
from test_harness_report import conversational_bot
from test_harness_sources import speech_like


async def run_cli(*argv: str) -> int:
    # The commands run their own event loop: give them a thread of their own.
    return await asyncio.to_thread(main, list(argv))


async def test_replay_writes_report_wav_and_page(tmp_path, capsys):
    call = tmp_path / "call.wav"
    soundfile.write(call, speech_like(16000), 16000, subtype="PCM_16")
    async with FakeBot() as bot:
        status = await run_cli("replay", str(call), "--url", bot.url, "--speed", "8", "--out", str(tmp_path / "out"), "--param", "lang=en")
    assert status == 0
    assert bot.sessions[0].start.custom_parameters == {"lang": "en", "IvrClockRate": "8"}  # --speed 8
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["turns"]) == 2 and report["call"]["kind"] == "recording"
    assert (tmp_path / "out" / "call.wav").stat().st_size > 40_000
    assert (tmp_path / "out" / "timeline.html").exists()
    out = capsys.readouterr().out
    assert "caller  (speech)" in out and "report.json" in out


async def test_replay_refuses_a_bad_param(tmp_path, capsys):
    assert await run_cli("replay", "x.wav", "--url", "ws://127.0.0.1:9/", "--param", "novalue") == 2
    assert "NAME=VALUE" in capsys.readouterr().out


async def test_replay_of_an_unreachable_bot_fails(tmp_path):
    call = tmp_path / "call.ulaw"
    call.write_bytes(b"\xff" * 1600)
    assert await run_cli("replay", str(call), "--url", "ws://127.0.0.1:9/media", "--out", str(tmp_path / "o")) == 1


async def test_load_command_writes_its_summary(tmp_path, capsys):
    call = tmp_path / "call.wav"
    soundfile.write(call, speech_like(8000), 8000, subtype="PCM_16")
    async with FakeBot(conversational_bot(), strict=False) as bot:
        status = await run_cli(
            "load", str(call), "--url", bot.url, "--calls", "3", "--ramp", "0.3", "--duration", "1.5",
            "--speed", "4", "--out", str(tmp_path / "load.json"), "--no-progress",
        )
    assert status == 0
    summary = json.loads((tmp_path / "load.json").read_text())
    assert summary["format"] == "ivr.load.summary/1" and summary["calls_started"] >= 3
    assert "response latency" in capsys.readouterr().out
