"""Shared-state metrics (the process-wide Prometheus registry, served at /metrics)."""

from prometheus_client import Counter, Gauge

REDIS_UP = Gauge("ivr_redis_up", "1 while Redis (IVR_REDIS_URL) answers, 0 while this pod runs on its own state")
FALLBACKS = Counter(
    "ivr_redis_fallbacks_total",
    "Shared-state operations served by this pod's own memory because Redis was unreachable",
    ["op"],  # outcome | verdict | lines | pace | campaign | index
)
