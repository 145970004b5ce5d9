"""Provider selection from settings, the offline guarantee, and the `ivr stt` / `ivr tts` commands."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import pytest

from ivr.config import ConfigError, Settings
from ivr.providers.local_stt import default_model_name
from ivr.providers.registry import build

SAMPLES = Path(__file__).parent / "samples"


def test_defaults_are_the_embedded_engines_and_the_example_flow():
    providers = build(Settings.from_env({}))
    # The embedded recogniser, its turns judged by the end-of-turn model (Smart Turn v3).
    assert type(providers.stt).__name__ == "TurnGatedStt"
    # Moonshine where its package is installed (the local extra on Linux x86-64), else tiny.en.
    expected = "MoonshineStt" if default_model_name() == "moonshine" else "WhisperStt"
    assert type(providers.stt.inner).__name__ == expected
    assert providers.stt.inner.options.end_of_turn_ms == 200  # the model's floor, not the 600 ms timer
    assert type(providers.tts).__name__ == "PiperTts"
    assert type(providers.brain).__name__ == "FlowBrain"
    assert providers.brain.flow.name == "Sunrise Bakery"
    assert providers.stt.vad is providers.vad  # one VAD model per process


def test_the_turn_model_can_be_turned_off():
    providers = build(Settings.from_env({"IVR_TURN_MODEL": "off", "IVR_STT_MODEL": "tiny.en"}))
    assert type(providers.stt).__name__ == "WhisperStt"
    assert providers.stt.options.end_of_turn_ms == 600  # the plain timer


def test_stretches_joined_across_short_pauses_is_a_setting():
    assert build(Settings.from_env({})).stt.inner.options.join_pause_ms == 300
    assert build(Settings.from_env({"IVR_STT_JOIN_PAUSE_MS": "0"})).stt.inner.options.join_pause_ms == 0


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"IVR_STT": "nope"}, "IVR_STT"),
        ({"IVR_TTS": "nope"}, "IVR_TTS"),
        ({"IVR_BRAIN": "nope"}, "IVR_BRAIN"),
        ({"IVR_FLOW": "/no/such/flow.yaml"}, "IVR_FLOW"),
        ({"IVR_VAD_THRESHOLD": "0.2", "IVR_VAD_NEG_THRESHOLD": "0.4"}, "IVR_VAD"),
        ({"IVR_STT_END_OF_TURN_MS": "10"}, "IVR_STT_END_OF_TURN_MS"),
        ({"IVR_STT_JOIN_PAUSE_MS": "-1"}, "IVR_STT_JOIN_PAUSE_MS"),
        ({"IVR_TTS_VOICE": "/no/voice.onnx"}, "IVR_TTS_VOICE"),
        ({"IVR_TURN_MODEL": "/no/turn.onnx"}, "IVR_TURN_MODEL"),
        ({"IVR_TURN_MODEL": "maybe"}, "IVR_TURN_MODEL"),
        ({"IVR_TURN_THRESHOLD": "1.5"}, "IVR_TURN_THRESHOLD"),
        ({"IVR_TURN_MAX_SILENCE_MS": "300"}, "IVR_TURN_MAX_SILENCE_MS"),
    ],
)
def test_bad_settings_name_their_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        build(Settings.from_env(env))


def test_a_bad_flow_file_is_reported(tmp_path):
    flow = tmp_path / "flow.yaml"
    flow.write_text("nodes: {a: {say: hi}}\nmenus: {}\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'menus'"):
        build(Settings.from_env({"IVR_FLOW": str(flow)}))


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    attempts = []

    def refuse_network(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "urllib.Request", "http.client.connect"):
            attempts.append(event)
            raise OSError("network use is not allowed here: " + event)

    sys.addaudithook(refuse_network)
    from ivr.config import Settings
    from ivr.providers.registry import build
    from ivr.bench.engines import load_samples, transcribe_call

    async def main():
        p = build(Settings.from_env({}))
        await p.load()
        sample = load_samples(sys.argv[1])[0]
        events, _, _ = await transcribe_call(p.stt, sample.ulaw)
        stream = p.tts.stream()
        await stream.push("Hello.")
        await stream.end()
        audio = b"".join([c.audio async for c in stream])
        s = await p.brain.open(None)
        greeting = [o async for o in s.greeting()]
        print("events", len(events), "audio", len(audio), "greeting", len(greeting))

    asyncio.run(main())
    print("network attempts:", attempts)
    """
)


def test_nothing_reaches_a_model_hub(tmp_path):
    pytest.importorskip("faster_whisper")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(SAMPLES)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "network attempts: []" in result.stdout
    assert "greeting 2" in result.stdout
    assert not (tmp_path / "hf").exists()  # no hub cache was even created


def test_ivr_stt_prints_the_transcript_with_timings(capsys, monkeypatch):
    pytest.importorskip("faster_whisper")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ivr.cli import main

    assert main(["stt", str(SAMPLES / "piper_person.ulaw")]) == 0
    out = capsys.readouterr().out
    assert "speech started" in out
    assert "end of turn: Can I speak to a real person?" in out


def test_ivr_tts_writes_what_the_phone_plays(tmp_path, monkeypatch):
    pytest.importorskip("piper")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from ivr.cli import main

    out = tmp_path / "hello.wav"
    assert main(["tts", "Hello, and thanks for calling.", "-o", str(out)]) == 0
    with wave.open(str(out), "rb") as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1)
        frames = w.getnframes()
    assert frames > 8000 and frames % 160 == 0  # whole 20 ms phone frames, over a second of speech


def test_the_recogniser_may_be_primed_with_the_flows_words():
    assert build(Settings.from_env({})).stt.options.prompt == ""
    primed = build(Settings.from_env({"IVR_STT_PROMPT": "flow"})).stt.options.prompt
    assert primed.startswith("Sunrise Bakery.") and "pickup" in primed and "order number" in primed
    assert build(Settings.from_env({"IVR_STT_PROMPT": "Acme, widgets"})).stt.options.prompt == "Acme, widgets"
    # Another brain has no flow to take words from.
    assert build(Settings.from_env({"IVR_STT_PROMPT": "flow", "IVR_BRAIN": "openai", "OPENAI_API_KEY": "k"})).stt.options.prompt == ""
