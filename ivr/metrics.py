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

# Cloud providers (ivr.providers.cloud records these), labelled by provider: deepgram, openai,
# elevenlabs. "First" is the first transcript / token / audio byte of a turn after its request.
from prometheus_client import Histogram as _Histogram  # noqa: E402

PROVIDER_FIRST_SECONDS = _Histogram(
    "ivr_provider_first_result_seconds",
    "Time from request to a cloud provider's first result (STT: final after speech end; LLM: token; TTS: audio byte)",
    ["provider"],
    buckets=(0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
PROVIDER_ERRORS = Counter("ivr_provider_errors_total", "Cloud provider failures", ["provider", "kind"])
PROVIDER_RECONNECTS = Counter("ivr_provider_reconnects_total", "Cloud provider sockets reopened mid-call", ["provider"])
PROVIDER_WAITS = Counter("ivr_provider_waits_total", "Calls that waited for a provider concurrency slot", ["provider"])
PROVIDER_FALLBACKS = Counter("ivr_provider_fallbacks_total", "Turns served by a fallback (embedded TTS, spoken line)", ["provider"])
