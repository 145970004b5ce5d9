"""Regenerate the paused callers in paused/: sentences with a pause of 0.7-1.0 s mid-sentence,
as a caller who stops to think or to read out a number ("The number I have is ... five five
five, zero one two three"). Listed in paused/transcripts.tsv with where each pause is.

Run from the repository root: python tests/samples/make_paused.py
Two voices: piper (joe-us, the pause put at a word boundary of the whole sentence rendered at
once, so the words before it keep their mid-sentence intonation) and espeak-ng (an SSML break);
and two recorded sentences (CMU ARCTIC, ../arctic_*.wav) with a pause put between two words, at
the quietest 10 ms near the word boundary. Each is 8 kHz mu-law, headerless, as a phone line
carries it.
"""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import numpy as np

from ivr.audio import pcm16_to_ulaw, resample

HERE = Path(__file__).parent / "paused"
LEAD_MS, TAIL_MS = 300, 400

#: "|" marks a pause; the pause lengths cycle through PAUSES_MS.
SENTENCES = [
    "The number I have is | five five five, zero one two three.",
    "The person at extension | four two | is unavailable.",
    "I'd like to order | a dozen croissants for Saturday.",
    "My account number is | seven three one nine.",
    "Can you tell me | what time you close today?",
    "I was wondering if | you have any gluten free bread.",
    "I need to change the address on | my delivery.",
    "My name is John and | I'm calling about my order.",
    "Could you put me through to | the manager please?",
    "The card ends in | four four two one.",
    "I want to cancel | the order I placed yesterday.",
    "We are at | twelve Main Street.",
]
PAUSES_MS = (700, 800, 900, 1000)
#: Recorded sentences: (file, text, where the pause goes in s, its length in ms). The word
#: boundaries were found with faster-whisper's word timestamps.
RECORDED = [
    ("arctic_a0007.wav", "And you always want to see it in the superlative degree.", 2.04, 800),
    ("arctic_a0009.wav", "He turned sharply, and faced Gregson across the table.", 1.04, 900),
]


def silence(ms: int, rate: int) -> np.ndarray:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def phone(pcm: np.ndarray, rate: int) -> bytes:
    pcm8 = resample(pcm.astype("<i2").tobytes(), rate, 8000)
    return pcm16_to_ulaw(silence(LEAD_MS, 8000).tobytes() + pcm8 + silence(TAIL_MS, 8000).tobytes())


def piper_paused(tts, parts: list[str], pauses: list[int]) -> bytes:
    text = " ".join(parts)
    (phonemes,) = tts.sentences(text)
    pcm, spans = tts.render(phonemes)
    x = np.frombuffer(pcm, dtype="<i2")
    rate = tts.sample_rate
    pieces, at, word = [], 0, 0
    for part, pause in zip(parts[:-1], pauses):
        word += len(part.split())
        # Midway between the last word of the part and the next word: no word is clipped.
        cut = int((spans[word - 1][1] + spans[word][0]) / 2 * rate / 1000)
        pieces += [x[at:cut], silence(pause, rate)]
        at = cut
    pieces.append(x[at:])
    return phone(np.concatenate(pieces), rate)


def espeak_paused(parts: list[str], pauses: list[int]) -> bytes:
    ssml = "<speak>" + "".join(
        part + (f' <break time="{pause}ms"/> ' if pause else "") for part, pause in zip(parts, pauses + [0])
    ) + "</speak>"
    wav = subprocess.run(["espeak-ng", "-m", "-s", "155", "-v", "en-us", "--stdout", ssml],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        x, rate = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()
    return phone(x, rate)


def recorded_paused(path: Path, at_s: float, pause: int) -> bytes:
    with wave.open(str(path)) as w:
        x, rate = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()
    # The quietest 10 ms within 150 ms of the boundary: no word is clipped.
    block = rate // 100
    first = int((at_s - 0.15) * rate) // block
    energy = [float(np.sum(x[(first + i) * block : (first + i + 1) * block].astype(np.float64) ** 2)) for i in range(30)]
    cut = (first + int(np.argmin(energy))) * block + block // 2
    return phone(np.concatenate((x[:cut], silence(pause, rate), x[cut:])), rate)


def main() -> None:
    from ivr.providers.local_tts import PiperTts

    tts = PiperTts(workers=1, length_scale=1.1)
    HERE.mkdir(exist_ok=True)
    rows = ["file\ttext\tpauses_ms"]
    for i, sentence in enumerate(SENTENCES):
        parts = [p.strip() for p in sentence.split("|")]
        pauses = [PAUSES_MS[(i + k) % len(PAUSES_MS)] for k in range(len(parts) - 1)]
        text = " ".join(parts)
        for voice, audio in (("piper", piper_paused(tts, parts, pauses)), ("espeak", espeak_paused(parts, pauses))):
            name = f"{voice}_{i:02d}.ulaw"
            (HERE / name).write_bytes(audio)
            rows.append(f"{name}\t{text}\t{','.join(map(str, pauses))}")
            print(name, f"{len(audio) / 8000:.2f} s", text)
    for i, (source, text, at_s, pause) in enumerate(RECORDED):
        name = f"recorded_{i:02d}.ulaw"
        (HERE / name).write_bytes(recorded_paused(HERE.parent / source, at_s, pause))
        rows.append(f"{name}\t{text}\t{pause}")
        print(name, text)
    (HERE / "transcripts.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
