"""The noise set of `ivr bench engines`: the same clips every run, as a phone line carries them."""

import numpy as np
import pytest

pytest.importorskip("scipy")

from ivr.audio import ulaw_to_pcm16  # noqa: E402
from ivr.bench.engines import Sample  # noqa: E402
from ivr.bench.noise import SECONDS, noise_set  # noqa: E402


def level_dbfs(sample: Sample) -> float:
    x = np.frombuffer(ulaw_to_pcm16(sample.ulaw), dtype="<i2").astype(np.float64) / 32768
    active = x[np.abs(x) > 1e-3]
    return 20 * np.log10(np.sqrt(np.mean(active**2)))


def test_the_noise_set_is_the_same_every_run_and_holds_no_words():
    first, again = noise_set(), noise_set()
    assert [(s.name, s.ulaw) for s in first] == [(s.name, s.ulaw) for s in again]
    assert all(s.text == "" and len(s.ulaw) == int(SECONDS * 8000) for s in first)


def test_noise_clips_sit_at_their_stated_level():
    for sample in noise_set():
        stated = float(sample.name.split()[-2]) if sample.name.endswith("dBFS") else None
        if stated is not None:
            assert abs(level_dbfs(sample) - stated) < 3, sample.name


def test_babble_is_made_only_from_speech_given():
    speech = [Sample("a", "x", b"\x10\x20" * 8000)]
    names = [s.name for s in noise_set(speech)]
    assert any("babble" in n for n in names) and not any("babble" in n for n in [s.name for s in noise_set()])
