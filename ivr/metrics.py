"""Prometheus metrics, all under the `ivr_` prefix, in the process-wide default registry."""

from prometheus_client import Counter, Gauge

ACTIVE_CALLS = Gauge("ivr_active_calls", "Media streams connected now")
CALLS = Counter("ivr_calls_total", "Media streams accepted", ["outcome"])
FRAMES_IN = Counter("ivr_frames_in_total", "Caller media messages accepted")
FRAMES_OUT = Counter("ivr_frames_out_total", "Bot media messages sent")
PROTOCOL_ERRORS = Counter("ivr_protocol_errors_total", "Inbound messages skipped as malformed", ["kind"])
MEDIA_ANOMALIES = Counter(
    "ivr_media_anomalies_total",
    "Media frames lost (filled with silence), repeated, late or on another track",
    ["kind"],
)
WEBHOOKS = Counter("ivr_webhooks_total", "Twilio webhook requests", ["route", "outcome"])
SIGNATURE_FAILURES = Counter("ivr_signature_failures_total", "Requests refused for a bad X-Twilio-Signature", ["route"])
