"""The speech sets `ivr bench engines` measures the recogniser on, each as a phone line carries it.

- recorded: real recorded speech of several voices (CMU ARCTIC sentences, CMU Sphinx test
  recordings of commands, playing cards and digits, LibriVox readings, Asterisk's recorded
  digits joined into numbers): the `.wav` files of the sample directory and its `recorded/`.
- asterisk: the prompts of Asterisk's core sounds (one voice, recorded for telephone systems:
  "Weasels have eaten our phone system", "Thank you for your patience"), read from the Debian
  package `asterisk-core-sounds-en-wav` when it is installed, with their texts from
  `asterisk-core-sounds-en`. Not shipped: the bench builds this set where the package is.
- synthetic: questions a caller asks, from piper (the `.ulaw` files of the sample directory) and
  from espeak-ng when it is installed.
- flow: answers a caller gives at a node of the example flow (the menu, the order number, the
  menu after an order), from espeak-ng; each clip knows its node, for the recogniser's bias.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import wave
from pathlib import Path

from ivr.bench.engines import Sample, load_samples, phone_line

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")

#: What callers ask a small business, as espeak-ng says them.
ESPEAK_QUESTIONS = (
    "Hi, what time do you open on Saturday?",
    "Where are you located?",
    "Can I speak to a real person?",
    "I'd like to check on my order please.",
    "My order number is four five seven two.",
    "Do you have parking?",
    "No thanks, that's all.",
    "Are you open on Sunday?",
)
ESPEAK_VOICES = ("en-us", "en-gb")

#: What callers say at the nodes of the example flow (ivr/flows/example.yaml): (node, words).
FLOW_ANSWERS = (
    ("main", "What are your opening hours?"),
    ("main", "I want to pick up my order."),
    ("main", "Is my order ready for pickup?"),
    ("main", "Can I get directions to the shop?"),
    ("main", "I'd like to place an order for a cake."),
    ("main", "When do you close today?"),
    ("check_order", "It's four seven two nine."),
    ("check_order", "Order number eight three six one."),
    ("check_order", "Five five zero one two."),
    ("main_quiet", "No thank you, that's all."),
    ("main_quiet", "Can I talk to someone?"),
    ("main_quiet", "I want to check another order."),
)


def recorded(directory: str | Path) -> list[Sample]:
    directory = Path(directory)
    samples = [s for s in load_samples(directory) if not s.name.endswith(".ulaw")] if (directory / "transcripts.tsv").is_file() else []
    if (directory / "recorded" / "transcripts.tsv").is_file():
        samples += load_samples(directory / "recorded")
    return samples


def synthetic(directory: str | Path) -> list[Sample]:
    directory = Path(directory)
    samples = [s for s in load_samples(directory) if s.name.endswith(".ulaw")] if (directory / "transcripts.tsv").is_file() else []
    espeak = shutil.which("espeak-ng")
    if espeak:
        for voice in ESPEAK_VOICES:
            for i, text in enumerate(ESPEAK_QUESTIONS):
                wav = subprocess.run([espeak, "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
                samples.append(Sample(f"espeak-{voice}-{i}", text, _wav_to_line(wav)))
    return samples


def flow_answers() -> list[Sample]:
    espeak = shutil.which("espeak-ng")
    if not espeak:
        return []
    samples = []
    for voice in ESPEAK_VOICES:
        for i, (node, text) in enumerate(FLOW_ANSWERS):
            wav = subprocess.run([espeak, "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
            samples.append(Sample(f"flow-{voice}-{i}", text, _wav_to_line(wav), node))
    return samples


def asterisk(every: int = 3) -> list[Sample]:
    """Every `every`-th spoken prompt of plain words (1 to 16 of them), and the ten digits."""
    if not (ASTERISK_SOUNDS.is_dir() and ASTERISK_TEXTS.is_file()):
        return []
    texts: dict[str, str] = {}
    for line in gzip.open(ASTERISK_TEXTS, "rt", encoding="utf-8", errors="replace"):
        name, sep, text = line.partition(": ")
        if sep and not line.startswith(";"):
            texts[name.strip()] = text.strip()
    chosen = []
    plain = [n for n, t in texts.items() if "/" not in n and _plain(t)]
    chosen += plain[::every]
    chosen += [f"digits/{d}" for d in range(10)]
    samples = []
    for name in chosen:
        path = ASTERISK_SOUNDS / f"{name}.wav"
        if path.is_file():
            samples.append(Sample(f"asterisk/{name}", texts[name], _wav_to_line(path.read_bytes())))
    return samples


def _plain(text: str) -> bool:
    # Plain words only: no [tone] descriptions, no "A.M."-style abbreviations or spelled letters
    # whose written form is a matter of taste.
    if not re.fullmatch(r"[A-Za-z0-9 ,.'?!-]+", text) or re.search(r"\b[A-Za-z]\.[A-Za-z]", text):
        return False
    return 1 <= len(text.split()) <= 16


def _wav_to_line(data: bytes) -> bytes:
    import io

    with wave.open(io.BytesIO(data), "rb") as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError("expected 16-bit mono WAV")
    return phone_line(pcm, rate)


def stt_sets(directory: str | Path) -> dict[str, list[Sample]]:
    sets = {"recorded": recorded(directory), "asterisk": asterisk(), "synthetic": synthetic(directory), "flow": flow_answers()}
    return {name: samples for name, samples in sets.items() if samples}
