"""The load generator: concurrent calls, figures, server sampling, and the `ivr load` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from fakebot import FakeBot, tone_ulaw
from ivr.audio import FRAME_BYTES
from ivr.harness.emulator import TwilioEmulator
from ivr.harness.load import LoadFigures, LoadOptions, run_load_with_monitor
from ivr.harness.playback import TwilioPlayback
from ivr.harness.readbatch import ReadBatch
from ivr.harness.record import CallRecord
from ivr.harness.report import build_report, ms, percentiles
from ivr.harness.samples import sample_calls
from ivr.harness.voice import Utterance
from test_harness_report import conversational_bot, replay_against, script


async def test_concurrent_calls_and_their_figures(monkeypatch):
    # How long each bot message waited to be read: None when read as it arrived.
    waited = []
    handle = TwilioEmulator._on_bot_message

    def spy(self, message):
        at = self._ws.received_at
        waited.append(None if at is None else time.monotonic() - at)
        handle(self, message)

    monkeypatch.setattr(TwilioEmulator, "_on_bot_message", spy)
    # Which marks were echoed by a pass of the frame pacer, and every mark echoed as played.
    in_pass, played = [], []
    echo_in_pass, due_marks = TwilioEmulator._echo_in_pass, TwilioPlayback.due_marks

    def spy_pass(self, due):
        before = len(played)
        echo_in_pass(self, due)
        # Each echo with when it went and when its audio had played, in wall-clock seconds.
        in_pass.extend((m, time.monotonic(), self.clock.monotonic_at(m.due_ms)) for m in played[before:])

    def spy_due(self, now_ms, early_ms=0.0):
        marks = due_marks(self, now_ms, early_ms)
        played.extend(marks)
        return marks

    monkeypatch.setattr(TwilioEmulator, "_echo_in_pass", spy_pass)
    monkeypatch.setattr(TwilioPlayback, "due_marks", spy_due)
    options = LoadOptions(url="", calls=4, ramp_s=0.4, duration_s=3.0, speed=4)
    async with FakeBot(conversational_bot(), strict=False) as bot:
        options.url = bot.url
        updates = []
        summary = await run_load_with_monitor([script()], options, server_pid=os.getpid(), on_change=updates.append)
    assert len(bot.sessions) == summary["calls_started"] >= 4
    assert summary["calls_failed"] == 0 and summary["calls_completed"] == summary["calls_started"]
    assert summary["response_latency_ms"]["n"] >= 4
    assert 100 < summary["response_latency_ms"]["p50"] < 1000
    assert summary["barge_in_latency_ms"]["n"] >= 2 and summary["frames_after_clear"] == 0
    assert summary["inbound_frame_lag_ms"]["n"] > 500
    assert summary["outbound_jitter_ms"]["n"] >= 4
    assert summary["server"]["pid"] == os.getpid() and summary["server"]["samples"] >= 1
    assert 2.5 < summary["wall_seconds"] < 10
    assert updates and max(f.active for f in updates) <= 4
    # The bot's messages were read in the frame pacer's passes, each with the kernel's time of
    # its arrival, a little before it was read (those after the frames stop, as they arrive).
    batched = [w for w in waited if w is not None]
    if ReadBatch.supported():
        assert len(batched) > len(waited) / 2
        assert all(-0.001 <= w < 1.0 for w in batched)
        # So were the echoes of marks whose audio played out: in a pass of the frame pacer, not
        # by a timer each, once each, and never before the audio had played but by the timer
        # resolution (1 ms).
        assert len(played) >= 4 and len(in_pass) > len(played) / 2
        assert len({id(m) for m in played}) == len(played)
        assert all(sent >= played_at - 0.001 for _, sent, played_at in in_pass)
    else:
        assert batched == [] and in_pass == []


def assert_load_counts_what_the_report_says(record: CallRecord) -> None:
    report = build_report(record)
    figures = LoadFigures()
    figures.add(record)
    turns, barges, bot = report["turns"], report["barge_ins"], report["bot"]
    # The load keeps its times unrounded; the report rounds them to 0.1 ms.
    assert [ms(t) for t in figures.response_ms] == [t["response_latency_ms"] for t in turns if t["response_latency_ms"] is not None]
    assert figures.unanswered_turns == sum(t["response_latency_ms"] is None for t in turns)
    assert [ms(t) for t in figures.barge_in_ms] == [b["latency_ms"] for b in barges if b["latency_ms"] is not None]
    assert figures.barge_ins_without_clear == sum(b["latency_ms"] is None for b in barges)
    assert figures.frames_after_clear == sum(b["frames_after_clear"] for b in barges)
    assert percentiles(figures.frame_lag_ms) == report["caller"]["frame_lag_ms"]
    assert [ms(j) for j in figures.jitter_ms] == ([bot["jitter_ms"]] if bot["media_messages"] else [])
    assert percentiles(figures.lead_ms) == bot["lead_ms"]
    assert len(figures.lead_ms) == bot["media_messages"]
    assert figures.underruns == bot["underruns"]
    kinds = [e["kind"] for e in report["errors"]]
    assert figures.timeouts == kinds.count("timeout") and figures.cut == ("max_duration" in kinds)
    assert figures.completed == 1 and figures.failed == (report["call"]["failed"] or "harness_error" in kinds)
    if figures.failures:
        assert figures.failures[0]["error"] in report["errors"] + [None]


async def test_load_figures_are_the_reports_figures_of_replayed_calls():
    """A load run counts each call without building its report: it must count what the report
    says of the same call (turns answered and not, barge-ins, leaked audio, pacing)."""
    for leak in (False, True):
        record = await replay_against(conversational_bot(leak_after_clear=leak))
        assert build_report(record)["barge_ins"]
        assert_load_counts_what_the_report_says(record)


def paced_record() -> CallRecord:
    """A call built by hand: bot audio paced in real time with a late frame, an underrun and a
    clear, the caller speaking over it, a key, a timeout and the length limit."""
    record = CallRecord(name="paced", kind="script", source="test", url="", speed=1.0, call_sid="CA1",
                        stream_sid="MZ1", params={}, started_at="", connected=True, ended_by="caller")
    playback = record.playback
    tone = tone_ulaw(20)
    t = 0.0
    for k in range(60):
        t = k * 20.0 + (7.0 if k == 10 else 0.0) + (120.0 if k >= 30 else 0.0)
        playback.on_media(t, tone)
    playback.on_media(t + 5, tone * 10)  # ahead of its time: a lead, no jitter
    playback.on_clear(t + 30)
    playback.on_media(t + 35, tone)  # after the clear, while the caller still speaks
    caller = Utterance(tone_ulaw(600), text="over the bot")
    caller.start_sample = int((t - 100) * 8)
    record.utterances.append(caller)
    record.dtmf.append(("5", t + 900))
    record.frame_lag_ms.extend([0.0, 0.4, 3.2, 0.0, 12.5])
    record.caller += bytes(FRAME_BYTES * 5)
    record.error(500.0, "timeout", "bot did not oblige")
    record.error(t + 1000, "max_duration", "hung up")
    record.end_ms = t + 1000
    return record


def test_load_figures_are_the_reports_figures_of_a_paced_call():
    record = paced_record()
    report = build_report(record)
    assert report["bot"]["underruns"] >= 1 and report["bot"]["jitter_ms"] > 0
    assert report["barge_ins"] and report["barge_ins"][0]["frames_after_clear"] >= 1
    assert_load_counts_what_the_report_says(record)


async def test_refused_connections_are_failed_calls():
    options = LoadOptions(url="ws://127.0.0.1:9/media", calls=2, ramp_s=0, duration_s=0.5)
    summary = await run_load_with_monitor([script()], options)
    assert summary["calls_failed"] == summary["calls_started"] >= 2
    assert summary["failures"][0]["error"]["kind"] == "connect_failed"
    assert summary["server"] is None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> tuple[subprocess.Popen, threading.Event]:
    """`ivr serve` in a child process, and an event set once it has started listening."""
    server = subprocess.Popen(
        [sys.executable, "-m", "ivr", "serve", "--port", str(port), "--max-calls", "200", "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    listening = threading.Event()

    def drain() -> None:  # keep reading, or a full pipe would block the server's logging
        for line in server.stderr:
            if "Uvicorn running on" in line:
                listening.set()

    threading.Thread(target=drain, daemon=True).start()
    return server, listening


@pytest.mark.slow
def test_load_50_calls_for_30_seconds_against_ivr_serve(tmp_path):
    """50 concurrent sample calls for 30 s against `ivr serve` with the embedded engines,
    in real time. Prints the figures; asserts only that the run itself worked."""
    port = free_port()
    server, listening = start_server(port)
    try:
        assert listening.wait(120), "ivr serve did not start listening"
        out = tmp_path / "load.json"
        result = subprocess.run(
            [sys.executable, "-m", "ivr", "load", "--calls", "50", "--ramp", "10", "--duration", "30",
             "--url", f"ws://127.0.0.1:{port}/media", "--server-pid", str(server.pid), "--out", str(out),
             "--no-progress", *map(str, sample_calls())],
            capture_output=True, text=True, timeout=300,
        )
        print(result.stdout, result.stderr)
        summary = json.loads(out.read_text())
    finally:
        server.terminate()
        server.wait(30)
    assert summary["calls_started"] >= 50
    assert summary["server"]["samples"] >= 20
    assert summary["inbound_frame_lag_ms"]["n"] > 50 * 25 * 50 * 0.5
