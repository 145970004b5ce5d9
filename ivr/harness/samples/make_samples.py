"""Regenerate the caller recordings of the sample calls with the embedded piper voice.

    python -m ivr.harness.samples.make_samples

Each `audio:` step of the sample scripts names a WAV here and carries its `text:`; this
renders that text, takes it to 8 kHz 16-bit mono (what a phone line carries) and writes it.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import yaml

from ivr.harness.audiofile import to_phone_pcm

HERE = Path(__file__).parent
#: A slightly slower voice than piper's default reads more like a person on the phone.
LENGTH_SCALE = 1.1
LEAD_MS, TAIL_MS = 150, 250  # a person's breath before and after speaking


def caller_lines() -> dict[str, str]:
    lines = {}
    for script in sorted(HERE.glob("*.yaml")):
        for step in yaml.safe_load(script.read_text(encoding="utf-8"))["steps"]:
            if "audio" in step:
                lines[step["audio"]] = step["text"]
    return lines


def main() -> None:
    from ivr.providers.local_tts import PiperTts

    engine = PiperTts(workers=1, length_scale=LENGTH_SCALE)
    engine._voice.get()
    for name, text in caller_lines().items():
        pcm = np.frombuffer(engine.synthesize(text), dtype="<i2")
        phone = to_phone_pcm(pcm, engine.sample_rate)
        phone = (phone.astype(np.float64) * 0.5).astype(np.int16)  # phone-line level, not full scale
        pad = lambda ms: np.zeros(ms * 8, dtype=np.int16)  # noqa: E731
        phone = np.concatenate((pad(LEAD_MS), phone, pad(TAIL_MS)))
        with wave.open(str(HERE / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(phone.astype("<i2").tobytes())
        print(f"{name}: {len(phone) / 8000:.2f} s  {text!r}")


if __name__ == "__main__":
    main()
