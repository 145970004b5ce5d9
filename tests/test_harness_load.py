"""The load generator: concurrent calls, figures, server sampling, and the `ivr load` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from fakebot import FakeBot
from ivr.harness.load import LoadOptions, run_load_with_monitor
from ivr.harness.samples import sample_calls
from test_harness_report import conversational_bot, script


async def test_concurrent_calls_and_their_figures():
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
