"""Call sources: recordings at any rate and channel, raw mu-law, Twilio captures, call scripts."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile

from fakebot import FakeBot, tone_ulaw
from ivr.audio import ulaw_to_pcm16
from ivr.harness.capture import CaptureWriter, read_capture
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import After, Dtmf, Hangup, Wait
from ivr.harness.report import build_report
from ivr.harness.sources import CallSourceError, load_call
from ivr.telephony.twilio import TwilioSender


def tone(rate: int, seconds: float, freq: float = 400.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * level * 32767).astype(np.int16)


def speech_like(rate: int) -> np.ndarray:
    """Two bursts of tone separated by a second of silence: two caller turns."""
    gap = np.zeros(rate, dtype=np.int16)
    return np.concatenate((gap[: rate // 2], tone(rate, 0.7), gap, tone(rate, 0.5), gap[: rate // 2]))


def level(ulaw: bytes) -> float:
    pcm = np.frombuffer(ulaw_to_pcm16(ulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt((pcm * pcm).mean()))


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 44100, 48000])
async def test_wav_at_any_rate_becomes_8k_with_detected_turns(tmp_path, rate):
    path = tmp_path / "call.wav"
    soundfile.write(path, speech_like(rate), rate, subtype="PCM_16")
    plan = await load_call(path)
    say = plan.steps[0]
    assert plan.kind == "recording" and isinstance(plan.steps[-1], Hangup)
    assert len(say.ulaw) == pytest.approx(8000 * 3.2, abs=8)
    from ivr.harness.speech import speech_segments, ulaw_pcm

    segments = speech_segments(ulaw_pcm(say.ulaw))
    assert [(round(a / 8000, 1), round(b / 8000, 1)) for a, b in segments] == [(0.5, 1.2), (2.2, 2.7)]


async def test_stereo_recording_takes_the_chosen_channel(tmp_path):
    left, right = tone(16000, 1.0, level=0.05), tone(16000, 1.0, level=0.5)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, np.stack((left, right), axis=1), 16000)
    quiet = (await load_call(path)).steps[0].ulaw
    loud = (await load_call(path, channel="right")).steps[0].ulaw
    assert level(loud) > 5 * level(quiet)
    with pytest.raises(CallSourceError, match="no channel"):
        await load_call(path, channel=2)


async def test_raw_mulaw_is_taken_as_is(tmp_path):
    ulaw = tone_ulaw(500)
    (tmp_path / "call.ulaw").write_bytes(ulaw)
    assert (await load_call(tmp_path / "call.ulaw")).steps[0].ulaw == ulaw


async def test_unknown_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CallSourceError, match="not a call"):
        await load_call(tmp_path / "notes.txt")


def write_capture(directory, frames: int = 150, dtmf_at: int = 60, lose: tuple[int, ...] = ()):
    sender = TwilioSender("MZcap", "CAcap", "ACcap")
    audio = tone_ulaw(frames * 20)
    writer = CaptureWriter.open(directory, call_sid="CAcap")
    writer.write(0, sender.connected())
    writer.write(1, sender.start({"lang": "en"}))
    for k in range(frames):
        message = sender.media(audio[k * 160 : (k + 1) * 160], k * 20)
        if k not in lose:
            writer.write(5 + k * 20 + (k % 3), message)
        if k == dtmf_at:
            writer.write(5 + k * 20 + 10, sender.dtmf("7"))
    writer.write(5 + frames * 20 + 100, sender.stop())
    writer.close()
    return writer.path, audio


async def test_capture_round_trip(tmp_path):
    path, audio = write_capture(tmp_path, lose=(30, 31))
    assert path.name.endswith("-CAcap.jsonl")
    messages = list(read_capture(path))
    assert messages[0].t_ms == 0 and '"connected"' in messages[0].text
    plan = await load_call(path)
    assert plan.kind == "capture" and plan.params == {"lang": "en"}
    say, dtmf, hangup = plan.steps
    # Lost chunks come back as silence, so the caller's audio keeps its timing.
    assert len(say.ulaw) == len(audio)
    assert say.ulaw[:4800] == audio[:4800] and say.ulaw[4800:5120] == b"\xff" * 320
    assert isinstance(dtmf, Dtmf) and dtmf.digits == "7"
    assert dtmf.after.kind == "at" and dtmf.after.seconds == pytest.approx(1.21, abs=0.01)
    assert hangup.after.kind == "at" and hangup.after.seconds == pytest.approx(3.1, abs=0.01)


async def test_capture_replays_with_its_timing(tmp_path):
    path, _ = write_capture(tmp_path)
    async with FakeBot() as bot:
        # At Twilio's own pace: at 10x a 20 ms stall of a busy test machine reads as 200 ms late.
        record = await TwilioEmulator(await load_call(path), ReplayOptions(url=bot.url, speed=1)).run()
    assert record.dtmf[0][0] == "7" and record.dtmf[0][1] == pytest.approx(1210, abs=100)
    # The caller hangs up when the capture's stop came: the stream holds the frames before it.
    assert record.end_ms == pytest.approx(3100, abs=1)
    assert len(record.caller) == 155 * 160
    assert bot.sessions[0].start.custom_parameters == {"lang": "en"}


async def fake_tts(text: str) -> tuple[bytes, int]:
    """Half a second of tone per word, at piper's rate."""
    return tone(22050, 0.5 * len(text.split())).tobytes(), 22050


async def test_call_script(tmp_path):
    soundfile.write(tmp_path / "yes.wav", tone(16000, 0.6), 16000)
    (tmp_path / "call.yaml").write_text(
        """
name: booking
params: {caller: "+15550100"}
steps:
  - say: "I want a table"
  - audio: yes.wav
    text: "yes"
    after: bot_speaking 0.8
    timeout: 5
  - dtmf: "12#"
    gap: 0.1
  - pause: 1.5
  - hangup:
""",
        encoding="utf-8",
    )
    plan = await load_call(tmp_path / "call.yaml", synthesise=fake_tts)
    assert plan.name == "booking" and plan.params == {"caller": "+15550100"}
    say, audio, dtmf, pause, hangup = plan.steps
    assert say.text == "I want a table" and len(say.ulaw) == pytest.approx(16000, abs=4)
    assert say.after == After("bot_silent", 0.6)
    assert audio.text == "yes" and audio.after == After("bot_speaking", 0.8, 5.0) and len(audio.ulaw) == 4800
    assert dtmf.digits == "12#" and dtmf.gap_s == 0.1
    assert isinstance(pause, Wait) and pause.after == After("pause", 1.5, 2.5)
    assert isinstance(hangup, Hangup) and hangup.after.kind == "bot_silent"


@pytest.mark.parametrize(
    "body, message",
    [
        ("steps: []", "non-empty"),
        ("steps:\n  - say: hi\n    dtmf: '1'", "exactly one"),
        ("steps:\n  - say: hi\n    after: when ready", "after:"),
        ("steps:\n  - audio: missing.wav", "missing.wav"),
    ],
)
async def test_bad_scripts_say_what_is_wrong(tmp_path, body, message):
    (tmp_path / "bad.yaml").write_text(body, encoding="utf-8")
    with pytest.raises(CallSourceError, match=message):
        await load_call(tmp_path / "bad.yaml", synthesise=fake_tts)


async def test_recording_turns_are_detected_in_the_report(tmp_path):
    path = tmp_path / "call.wav"
    soundfile.write(path, speech_like(8000), 8000, subtype="PCM_16")
    plan = await load_call(path)
    plan.steps[-1] = Hangup(After("now"))
    async with FakeBot() as bot:
        record = await TwilioEmulator(plan, ReplayOptions(url=bot.url, speed=20)).run()
    turns = build_report(record)["turns"]
    assert [(t["caller_speech_start_ms"], t["caller_speech_end_ms"]) for t in turns] == [
        (500.0, 1200.0),
        (2200.0, 2700.0),
    ]
    assert all(t["caller_text"] is None for t in turns)


def test_capture_writer_keeps_messages_verbatim(tmp_path):
    with CaptureWriter.open(tmp_path, stream_sid="MZ/../x") as writer:
        writer.write(12.5, '{"event": "media" ,"odd spacing": true}')
        writer.write(13, "not json at all")
        writer.write(14, b"\x00binary")
    assert writer.path.parent == tmp_path and "/" not in writer.path.name[:-6].split("-", 1)[1]
    assert [(m.t_ms, m.text) for m in read_capture(writer.path)] == [
        (12.5, '{"event": "media" ,"odd spacing": true}'),
        (13.0, "not json at all"),
        (14.0, b"\x00binary"),
    ]
