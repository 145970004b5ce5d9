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
