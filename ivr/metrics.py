"""Prometheus metrics, all under the `ivr_` prefix, in the process-wide default registry."""

import asyncio
import time

from prometheus_client import Counter, Gauge

ACTIVE_CALLS = Gauge("ivr_active_calls", "Media streams connected now")
CALLS = Counter("ivr_calls_total", "Media streams accepted", ["outcome"])
FRAMES_IN = Counter("ivr_frames_in_total", "Caller media messages accepted")
FRAMES_OUT = Counter("ivr_frames_out_total", "Bot audio frames (20 ms) sent, however many a message carries")
PROTOCOL_ERRORS = Counter("ivr_protocol_errors_total", "Inbound messages skipped as malformed", ["kind"])
MEDIA_ANOMALIES = Counter(
    "ivr_media_anomalies_total",
    "Media frames lost (filled with silence), repeated, late or on another track; long_gap: a jump in chunk or "
    "timestamp too long to fill (over 2 s)",
    ["kind"],
)
STREAMS_TIMED_OUT = Counter(
    "ivr_streams_timed_out_total",
    "Media streams closed for silence: no_start (no start in IVR_STREAM_IDLE_SECONDS), no_media (a started "
    "stream's audio stopped that long), evicted (silent for seconds while every line was taken)",
    ["reason"],
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
PROVIDER_FALLBACKS = Counter(
    "ivr_provider_fallbacks_total",
    "Turns or calls handed to a fallback (embedded TTS or recogniser, the call flow, a spoken line)",
    ["provider"],
)
PROVIDER_UP = Gauge("ivr_provider_up", "1 while a cloud provider is taken to answer, 0 while it is down (see the log)", ["provider"])
CALLS_ON_FALLBACK = Gauge(
    "ivr_calls_on_fallback", "Calls now served by a fallback in place of this cloud provider (recogniser, brain)", ["provider"]
)

# The conversation engine's view of each call (ivr.call.engine observes these), whatever the
# providers: what a caller waits for, and where the wait went.
from prometheus_client import Histogram  # noqa: E402

#: Phone-scale waits: a good answer starts within a second, a barge-in clears within 200 ms.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

RESPONSE_LATENCY = Histogram(
    "ivr_response_latency_seconds",
    "From the end of the caller's speech (its audio reaching us) to the bot's first answer frame sent",
    buckets=LATENCY_BUCKETS,
)
TURN_STAGE = Histogram(
    "ivr_turn_stage_seconds",
    "One answer's time by stage: stt (speech end to end of turn: endpointing and transcription), "
    "brain (to its first output), tts (to the first audio frame)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
BARGE_IN_LATENCY = Histogram(
    "ivr_barge_in_latency_seconds",
    "From the caller's speech start (its audio reaching us) to the clear that stops the bot",
    buckets=LATENCY_BUCKETS,
)
GREETING_LATENCY = Histogram(
    "ivr_greeting_latency_seconds", "From the stream's start to the greeting's first audio frame", buckets=LATENCY_BUCKETS
)
BARGE_INS = Counter("ivr_barge_ins_total", "Bot turns cut by the caller speaking over them")
TRANSFERS = Counter("ivr_transfers_total", "Calls handed on by the bot", ["kind"])  # number | sip
CALL_ENDINGS = Counter(
    "ivr_call_endings_total",
    "Media streams ended, by how: caller (Twilio stopped the stream), bot, transfer, disconnect (lost), refused, "
    "no_media or evicted (the caller's audio stopped)",
    ["how"],
)
DRAINING = Gauge("ivr_draining", "1 while the server drains (refusing new calls) before it exits")
DRAIN_ENDED = Counter("ivr_drain_ended_calls_total", "Calls the bot ended (or transferred) at the drain deadline")


def observe_answer(timing) -> None:
    """Record one answer (an `ivr.call.engine.TurnTiming` whose first audio has gone out)."""
    if timing.first_audio_at is None:
        return
    start = timing.speech_end_at if timing.speech_end_at is not None else timing.end_of_turn_at
    RESPONSE_LATENCY.observe(max(0.0, timing.first_audio_at - start))
    if timing.speech_end_at is not None:
        TURN_STAGE.labels("stt").observe(max(0.0, timing.end_of_turn_at - timing.speech_end_at))
    if timing.brain_first_at is not None:
        TURN_STAGE.labels("brain").observe(max(0.0, timing.brain_first_at - timing.end_of_turn_at))
        TURN_STAGE.labels("tts").observe(max(0.0, timing.first_audio_at - timing.brain_first_at))


def observe_barge_in(speech_arrived_at: float | None, now: float) -> None:
    """Record a barge-in whose clear went out at `now` (monotonic), for speech whose first audio
    reached us at `speech_arrived_at` (None: not known, counted only)."""
    BARGE_INS.inc()
    if speech_arrived_at is not None:
        BARGE_IN_LATENCY.observe(max(0.0, now - speech_arrived_at))
CALL_DURATION = Histogram(
    "ivr_call_duration_seconds",
    "Media stream length of calls taken (its p99 is what IVR_DRAIN_SECONDS should cover)",
    buckets=(10, 30, 60, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600),
)

# The server's own event loop: how late a timer runs is how late every call's audio is handled
# meanwhile (a garbage collection, a blocking call, a burst of work in one callback, or a host
# that did not give the process the CPU). A caller-side figure (the load generator's frame lag)
# mixes this with the caller's own lateness; this one is the server's alone.
LOOP_LAG = Histogram(
    "ivr_loop_lag_seconds",
    "How late the server's event loop ran a timer it sets every 50 ms: what every call waited meanwhile",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOOP_LAG_PERIOD_S = 0.05


class LoopLagMonitor:
    """One timer on the running loop, re-armed each time it fires; records how late it fired.

    A bare loop callback (no task, no coroutine): a few microseconds a period. Lateness is taken
    on the monotonic clock, not `loop.time()` (uvloop's is in whole milliseconds and cached per
    loop pass).
    """

    def __init__(self, period_s: float = LOOP_LAG_PERIOD_S, on_lag=None) -> None:
        self.period_s = period_s
        #: Called with each lateness in seconds after it is recorded (tests, diagnostics).
        self.on_lag = on_lag
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> "LoopLagMonitor":
        self._loop = asyncio.get_running_loop()
        self._arm(time.monotonic())
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        self._due = now + self.period_s
        self._handle = self._loop.call_later(self.period_s, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        # Timers may fire a little early by the loop's clock granularity: early counts as on time.
        lag = max(0.0, now - self._due)
        LOOP_LAG.observe(lag)
        self._arm(now)
        if self.on_lag is not None:
            self.on_lag(lag)


# The embedded speech-to-text (ivr.providers.local_stt).
STT_REDECODES = Counter(
    "ivr_stt_redecodes_total",
    "Stretches of speech the embedded STT decoded again over a longer window: "
    "short (far fewer words than the speech holds) or loop (the text repeated itself)",
    ["reason"],
)
STT_JOINED = Counter(
    "ivr_stt_joined_stretches_total",
    "Stretches of speech the embedded STT decoded again with the speech that followed a short pause "
    "(their first decode was dropped)",
)

# End of turn (ivr.turn): what the gate decided at each candidate end, and the model's time.
TURN_DECISIONS = Counter(
    "ivr_turn_decisions_total", "Candidate ends of a caller's turn, by what was decided",
    ["outcome"],  # ended | question | held_words | held_model | resumed | model_failed | model_busy
)
TURN_MODEL_SECONDS = Histogram(
    "ivr_turn_model_seconds", "End-of-turn model time per decision (features + inference, on its thread)",
    buckets=(0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
)
