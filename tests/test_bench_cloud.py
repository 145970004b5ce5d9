"""`ivr bench cloud`'s accounting: which caller frames bound an answer's window."""

from __future__ import annotations

from types import SimpleNamespace

from ivr.bench.cloud import _caller_late


def test_the_callers_own_lateness_is_read_over_the_answers_window():
    # Frames every 20 ms from t=100.0 s; frame 10 (due at 100.2 s) went out 12 ms late.
    lags = [0.5] * 30
    lags[10] = 12.0
    record = SimpleNamespace(monotonic_start=100.0, frame_lag_ms=lags)
    assert _caller_late(record, 100.15, 100.25) == 12.0
    assert _caller_late(record, 100.30, 100.40) == 0.5  # after it
    assert _caller_late(record, 100.00, 100.15) == 0.5  # before it
    assert _caller_late(record, 101.0, 102.0) == 0.0  # past the last frame: nothing to read
