"""The server's own event-loop lag (`ivr_loop_lag_seconds`): recorded, and it moves when the
loop is blocked. Blocking the loop (time.sleep on it) is the stimulus here, not a wait."""

import asyncio
import time

from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from ivr import metrics
from ivr.config import Settings
from ivr.server import create_app
from ivr.session import ListeningHandler


def lag_sample(suffix: str, **labels) -> float:
    return REGISTRY.get_sample_value(f"ivr_loop_lag_seconds_{suffix}", labels) or 0.0


async def test_a_blocked_loop_shows_as_one_late_timer():
    lags: asyncio.Queue[float] = asyncio.Queue()
    monitor = metrics.LoopLagMonitor(period_s=0.01, on_lag=lags.put_nowait).start()
    try:
        first = await asyncio.wait_for(lags.get(), 5)
        assert first < 0.1  # an idle loop runs its timer about on time
        count0, over0 = lag_sample("count"), lag_sample("count") - lag_sample("bucket", le="0.1")
        time.sleep(0.2)  # block the loop
        blocked = await asyncio.wait_for(lags.get(), 5)
        assert 0.1 <= blocked < 5
        assert lag_sample("count") >= count0 + 1
        # The late tick landed above the 100 ms bucket.
        assert lag_sample("count") - lag_sample("bucket", le="0.1") >= over0 + 1
    finally:
        monitor.stop()


def test_served_metrics_carry_the_loop_lag_and_it_moves_when_the_loop_is_blocked():
    app = create_app(Settings.from_env({}), handler_factory=ListeningHandler)
    with TestClient(app) as client:
        text = client.get("/metrics").text
        assert "# TYPE ivr_loop_lag_seconds histogram" in text
        before = lag_sample("sum")
        # Run a blocking call on the server's loop thread, as a stalled engine would.
        client.portal.call(time.sleep, 0.3)
        # The overdue timer runs on the loop's next pass, before this request is answered.
        client.get("/metrics")
        assert lag_sample("sum") - before >= 0.2


def test_the_load_generator_reads_the_lag_the_server_recorded_meanwhile():
    """`ivr load` reads the histogram before and after its run; what it reports is the change."""
    from ivr.harness.servermon import histogram_change, metrics_url, read_histogram
    from live_server import serve

    assert metrics_url("ws://127.0.0.1:8080/media") == "http://127.0.0.1:8080/metrics"
    assert metrics_url("wss://bot.example.com/media") == "https://bot.example.com/metrics"
    app = create_app(Settings.from_env({}), handler_factory=ListeningHandler)
    with serve(app) as base:
        read = read_histogram(base + "/metrics")
    assert read is not None and float("inf") in read and 0.02 in read
    assert read_histogram("http://127.0.0.1:9/metrics") is None  # nothing listens there

    before = {0.001: 10, 0.02: 10, 0.1: 10, float("inf"): 10}
    after = {0.001: 108, 0.02: 109, 0.1: 110, float("inf"): 111}  # 101 new: 98 fast, 1, 1, 1 slow
    change = histogram_change(before, after)
    assert change == {"n": 101, "p50_le": 1.0, "p99_le": 100.0, "max_le": None}
    assert histogram_change(after, after)["n"] == 0
    assert histogram_change(None, after) is None
