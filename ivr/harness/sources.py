"""Turn a CALL argument into a CallPlan: a recording, a Twilio capture or a call script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ivr.audio import ULAW_SILENCE
from ivr.audio.framing import SAMPLE_RATE
from ivr.harness.audiofile import RAW_ULAW_SUFFIXES, pcm_to_ulaw, read_ulaw
from ivr.harness.capture import is_capture, read_capture
from ivr.harness.plan import After, CallPlan, Dtmf, Hangup, Say, Wait
from ivr.harness.tts import Synthesiser, default_synthesiser
from ivr.telephony.twilio import Dtmf as DtmfEvent
from ivr.telephony.twilio import Media, ProtocolError, Start, Stop, StreamParser

SCRIPT_SUFFIXES = (".yaml", ".yml")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", *RAW_ULAW_SUFFIXES)
#: After a recording or capture ends, wait this long for the bot to finish answering.
TAIL = After("bot_silent", 1.0, 10.0)


class CallSourceError(ValueError):
    pass


async def load_call(
    path: str | Path, channel: str | int = "left", synthesise: Synthesiser | None = None
) -> CallPlan:
    path = Path(path)
    if not path.is_file():
        raise CallSourceError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in SCRIPT_SUFFIXES:
        return await load_script(path, synthesise)
    if suffix in AUDIO_SUFFIXES:
        return load_recording(path, channel)
    if is_capture(path):
        return load_capture(path)
    raise CallSourceError(
        f"{path}: not a call (WAV/FLAC/raw mu-law recording, .jsonl Twilio capture or .yaml call script)"
    )


def load_recording(path: Path, channel: str | int = "left") -> CallPlan:
    try:
        ulaw = read_ulaw(path, channel)
    except (RuntimeError, ValueError) as exc:  # soundfile raises RuntimeError-based errors
        raise CallSourceError(f"{path}: {exc}") from None
    steps = [Say(ulaw, segmentation="detect", label=path.name), Hangup(TAIL)]
    return CallPlan(name=path.stem, kind="recording", source=str(path), steps=steps)


def load_capture(path: Path) -> CallPlan:
    """Rebuild the caller's audio, DTMF and hang-up from a capture, on its original timing.

    The audio is laid out by the media `chunk`/`timestamp` counters (lost chunks become silence,
    as the server would play them) and starts at call time 0; DTMF and the hang-up keep their
    receive times relative to the first media message. Mark echoes in the capture are ignored:
    the harness echoes the marks of this run.
    """
    parser = StreamParser()
    track = bytearray()
    params: dict[str, str] = {}
    first_media: tuple[float, int] | None = None  # (t_ms, media timestamp)
    dtmf: list[tuple[float, str]] = []
    stop_ms: float | None = None
    for n, message in enumerate(read_capture(path), 1):
        try:
            event = parser.parse(message.text)
        except ProtocolError:
            continue  # the server skipped it too
        if isinstance(event, Start):
            params = dict(event.custom_parameters)
        elif isinstance(event, Media):
            if first_media is None:
                first_media = (message.t_ms, event.timestamp_ms)
            track += ULAW_SILENCE * event.gap_bytes
            track += event.payload
        elif isinstance(event, (DtmfEvent, Stop)):
            t = message.t_ms - first_media[0] + first_media[1] if first_media else 0.0
            if isinstance(event, Stop):
                stop_ms = t
            else:
                dtmf.append((t, event.digit))
    if first_media is None:
        raise CallSourceError(f"{path}: a capture with no caller audio")
    steps: list = [Say(bytes(track), segmentation="detect", wait=False, label=path.name)]
    steps += [Dtmf(digit, After("at", t / 1000)) for t, digit in dtmf]
    audio_end_ms = len(track) * 1000 / SAMPLE_RATE
    if stop_ms is not None:
        steps.append(Hangup(After("at", max(stop_ms, audio_end_ms) / 1000)))
    else:
        steps += [Hangup(After("at", audio_end_ms / 1000 + TAIL.seconds))]
    return CallPlan(name=path.stem, kind="capture", source=str(path), steps=steps, params=params)


# --- call scripts -----------------------------------------------------------------------------

ACTIONS = ("say", "audio", "dtmf", "pause", "hangup")


async def load_script(path: Path, synthesise: Synthesiser | None = None) -> CallPlan:
    """A YAML call script (format in ivr/harness/README.md)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CallSourceError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise CallSourceError(f"{path}: a call script is a mapping with 'steps'")
    raw_steps = doc.get("steps", doc.get("turns"))
    if not isinstance(raw_steps, list) or not raw_steps:
        raise CallSourceError(f"{path}: 'steps' must be a non-empty list")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise CallSourceError(f"{path}: 'params' must be a mapping")
    steps = []
    for i, raw in enumerate(raw_steps, 1):
        where = f"{path}: step {i}"
        try:
            steps.append(await _script_step(raw, path.parent, synthesise, where))
        except (ValueError, OSError, RuntimeError) as exc:
            if isinstance(exc, CallSourceError):
                raise
            raise CallSourceError(f"{where}: {exc}") from None
    return CallPlan(
        name=str(doc.get("name") or path.stem),
        kind="script",
        source=str(path),
        steps=steps,
        params={str(k): str(v) for k, v in params.items()},
    )


async def _script_step(raw: object, base: Path, synthesise: Synthesiser | None, where: str):
    if not isinstance(raw, dict):
        raise CallSourceError(f"{where}: a step is a mapping, e.g. {{say: 'hello', after: bot_silent 0.5}}")
    actions = [a for a in ACTIONS if a in raw]
    if len(actions) != 1:
        raise CallSourceError(f"{where}: exactly one of {', '.join(ACTIONS)} (found {actions or 'none'})")
    action = actions[0]
    timeout = raw.get("timeout")
    if action == "pause":
        seconds = float(raw["pause"])
        return Wait(After("pause", seconds, seconds + 1))
    default_after = "bot_silent 0.6" if action in ("say", "audio", "dtmf") else None
    after = After.parse(raw.get("after", default_after), timeout)
    if action == "hangup":
        return Hangup(after if "after" in raw else After("bot_silent", 1.0, timeout or 10.0))
    if action == "dtmf":
        digits = str(raw["dtmf"])
        return Dtmf(digits, after, float(raw.get("gap", 0.25)))
    if action == "audio":
        audio_path = base / str(raw["audio"])
        ulaw = read_ulaw(audio_path, raw.get("channel", "left"))
        return Say(ulaw, text=raw.get("text"), after=after, label=str(raw["audio"]))
    text = str(raw["say"])
    if synthesise is None:
        synthesise = default_synthesiser()
    pcm, rate = await synthesise(text)
    return Say(pcm_to_ulaw(np.frombuffer(pcm, dtype="<i2"), rate), text=text, after=after, label="tts")

