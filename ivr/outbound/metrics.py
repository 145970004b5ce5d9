"""Outbound call metrics (the process-wide Prometheus registry, served at /metrics)."""

from prometheus_client import Counter

PLACED = Counter("ivr_outbound_placed_total", "Outbound call requests to Twilio", ["outcome"])  # placed|refused|error
STATUS = Counter("ivr_outbound_status_total", "Outbound call status callbacks", ["status"])
ANSWERED_BY = Counter("ivr_outbound_answered_by_total", "Answering-machine verdicts on outbound calls", ["answered_by"])
API_REQUESTS = Counter("ivr_api_requests_total", "POST /calls and GET /outbound/calls requests", ["outcome"])
