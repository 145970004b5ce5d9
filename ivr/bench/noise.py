"""A noise set on the phone line: sounds a caller's line carries that are not words.

The recogniser only hears what the VAD lets through, and whatever it writes for a cough or a hum
becomes the caller's turn. `ivr bench engines` feeds each clip through a whole session (VAD,
stretches, decode) and counts the words written per minute of noise. The clips are made here,
from a fixed seed (the same every run), at 8 kHz and through mu-law as a phone line carries them:

- white and pink noise at a few levels (hiss, a bad line);
- mains hum with its harmonics; a burst of DTMF tones;
- breathing (band-limited noise, rising and falling) and coughs (short, sharp bursts);
- music-like tones (notes with harmonics, a chord);
- sounds of the voice that are not words: "mmm", "uh", laughter, a voiced cough;
- babble: several recorded sentences mixed at a low level, as talk in the room behind a caller.

Levels are in dBFS RMS; the recorded speech of `tests/samples` sits at -13 to -29 dBFS while
spoken.
"""

from __future__ import annotations

import numpy as np

from ivr.audio import pcm16_to_ulaw, ulaw_to_pcm16
from ivr.bench.engines import Sample

RATE = 8000
SECONDS = 6.0


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale to an RMS of `dbfs` (over the non-silent part)."""
    active = x[np.abs(x) > 1e-6]
    rms = float(np.sqrt(np.mean(active**2))) if len(active) else 1.0
    return x * (10 ** (dbfs / 20) / max(rms, 1e-12))


def _line(x: np.ndarray) -> bytes:
    pcm = np.clip(x * 32768, -32768, 32767).astype("<i2").tobytes()
    return pcm16_to_ulaw(pcm)


def _band(x: np.ndarray, low: float, high: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(4, [low, high], btype="band", fs=RATE, output="sos"), x)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def _tone(freqs: list[float], seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(np.sin(2 * np.pi * f * t) for f in freqs)


def _ramp(x: np.ndarray, ms: float = 5) -> np.ndarray:
    n = min(len(x) // 2, int(ms * RATE / 1000))
    if n:
        x = x.copy()
        x[:n] *= np.linspace(0, 1, n)
        x[-n:] *= np.linspace(1, 0, n)
    return x


def white(rng: np.random.Generator, dbfs: float) -> np.ndarray:
    return _level(rng.standard_normal(int(SECONDS * RATE)), dbfs)


def pink(rng: np.random.Generator, dbfs: float) -> np.ndarray:
    return _level(_pink(rng, int(SECONDS * RATE)), dbfs)


def hum(mains: float, dbfs: float) -> np.ndarray:
    # A ground loop's hum: the mains frequency and odd harmonics up into the voice band.
    t = np.arange(int(SECONDS * RATE)) / RATE
    x = sum(np.sin(2 * np.pi * mains * k * t) / k for k in (1, 3, 5, 7, 9, 11))
    return _level(x, dbfs)


DTMF = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "4": (770, 1209), "5": (770, 1336),
        "6": (770, 1477), "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "*": (941, 1209),
        "0": (941, 1336), "#": (941, 1477)}  # fmt: skip


def dtmf(keys: str, dbfs: float) -> np.ndarray:
    # Keys pressed fast, as a caller types a number: 80 ms tones, 80 ms gaps.
    gap = np.zeros(int(0.08 * RATE))
    parts = [np.zeros(int(0.5 * RATE))]
    for key in keys:
        parts += [_ramp(_level(_tone(list(DTMF[key]), 0.08), dbfs)), gap]
    x = np.concatenate(parts)
    return np.pad(x, (0, max(0, int(SECONDS * RATE) - len(x))))


def breathing(rng: np.random.Generator, dbfs: float) -> np.ndarray:
    # Breath into a handset: noise in the band of the voice, swelling in and out every ~2.5 s.
    n = int(SECONDS * RATE)
    t = np.arange(n) / RATE
    envelope = np.clip(np.sin(2 * np.pi * t / 2.5), 0, None) ** 2
    return _level(_band(rng.standard_normal(n), 400, 2500) * envelope, dbfs)


def coughs(rng: np.random.Generator, dbfs: float) -> np.ndarray:
    # Three coughs: a sharp onset and a fast decay, broadband with a low resonance.
    n = int(SECONDS * RATE)
    x = np.zeros(n)
    for at in (0.8, 2.6, 4.4):
        m = int(0.3 * RATE)
        t = np.arange(m) / RATE
        burst = _band(rng.standard_normal(m), 200, 3200) + 0.5 * np.sin(2 * np.pi * 180 * t)
        burst *= (1 - np.exp(-t / 0.008)) * np.exp(-t / 0.07)
        i = int(at * RATE)
        x[i : i + m] += burst
    return _level(x, dbfs)


def music(dbfs: float) -> np.ndarray:
    # A tune of notes with harmonics (hold music), then a chord.
    notes = [262, 294, 330, 349, 392, 440, 494, 523, 494, 440, 392, 349, 330, 294, 262, 330]
    decay = np.exp(-np.arange(int(0.25 * RATE)) / RATE / 0.3)
    parts = [_ramp(_tone([f, 2 * f, 3 * f], 0.25) * decay, 10) for f in notes]
    chord = _ramp(_tone([262, 330, 392, 524, 660], SECONDS - 0.25 * len(notes)), 10)
    return _level(np.concatenate(parts + [chord]), dbfs)


def _voice(rng: np.random.Generator, seconds: float, pitch: float, formants: list[tuple[float, float]]) -> np.ndarray:
    """A voiced sound with no words: a glottal pulse train (pitch falling a little, with jitter)
    through resonators at the given (frequency, bandwidth) formants."""
    from scipy.signal import lfilter

    n = int(seconds * RATE)
    x = np.zeros(n)
    t, i = 0.0, 0
    while i < n:
        x[i] = 1.0
        f0 = pitch * (1 - 0.15 * i / n) * (1 + 0.02 * rng.standard_normal())
        t += RATE / f0
        i = int(t)
    x = lfilter([1.0], [1.0, -0.95], x)  # the pulses' falling spectrum
    for f, bw in formants:
        r = np.exp(-np.pi * bw / RATE)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / RATE), r * r], x)
    return _ramp(x, 30)


def vocal(rng: np.random.Generator, kind: str, dbfs: float) -> np.ndarray:
    """Sounds a caller makes that are not words, at a speaking level: "mmm" (humming while
    thinking), "uh", laughter ("ha-ha-ha": breath and a vowel), a throat-clearing cough."""
    n = int(SECONDS * RATE)
    x = np.zeros(n)
    if kind == "mmm":
        events = [(0.5, _voice(rng, 0.9, 120, [(250, 60), (1000, 200), (2200, 250)])),
                  (3.0, _voice(rng, 1.2, 110, [(250, 60), (1000, 200), (2200, 250)]))]
    elif kind == "uh":
        events = [(0.5, _voice(rng, 0.5, 130, [(600, 80), (1200, 100), (2500, 150)])),
                  (3.2, _voice(rng, 0.7, 120, [(600, 80), (1200, 100), (2500, 150)]))]
    elif kind == "laugh":
        events = []
        for k in range(5):
            syllable = _voice(rng, 0.14, 220 - 10 * k, [(800, 120), (1300, 150), (2600, 200)])
            breath = _band(rng.standard_normal(int(0.06 * RATE)), 800, 3000) * 0.3 * np.abs(syllable).max()
            events.append((0.6 + 0.24 * k, np.concatenate([breath, syllable])))
    else:  # throat cleared, then a cough: noise with a low, rough voice under it
        events = []
        for at in (0.8, 3.0):
            m = int(0.35 * RATE)
            tt = np.arange(m) / RATE
            hiss = _band(rng.standard_normal(m), 300, 3200) * 0.6
            burst = hiss + _voice(rng, 0.35, 90, [(500, 200), (1500, 300)])[:m]
            events.append((at, burst * (1 - np.exp(-tt / 0.01)) * np.exp(-tt / 0.12)))
    for at, sound in events:
        i = int(at * RATE)
        part = sound[: n - i]
        x[i : i + len(part)] += part / max(np.abs(sound).max(), 1e-9)
    return _level(x, dbfs)


def babble(samples: list[Sample], dbfs: float, voices: int = 5) -> np.ndarray:
    # Several people talking at once behind the caller: recorded sentences overlaid, staggered.
    n = int(SECONDS * RATE)
    x = np.zeros(n)
    speech = [np.frombuffer(ulaw_to_pcm16(s.ulaw), dtype="<i2").astype(np.float64) / 32768 for s in samples]
    speech = [s for s in speech if len(s)]
    if not speech:
        return x
    for v in range(voices):
        at = int(v * RATE * 0.37)
        k = v
        while at < n:
            part = _level(speech[k % len(speech)], -20)[: n - at]
            x[at : at + len(part)] += part
            at += len(part) + int(0.2 * RATE)
            k += voices
    return _level(x, dbfs)


def noise_set(speech: list[Sample] | None = None) -> list[Sample]:
    """The noise clips, each as a Sample whose text is empty (no words should come out)."""
    rng = np.random.default_rng(22)
    clips = {
        "white -45 dBFS": white(rng, -45),
        "white -35 dBFS": white(rng, -35),
        "white -25 dBFS": white(rng, -25),
        "pink -35 dBFS": pink(rng, -35),
        "pink -25 dBFS": pink(rng, -25),
        "hum 50 Hz -25 dBFS": hum(50, -25),
        "hum 60 Hz -30 dBFS": hum(60, -30),
        "DTMF 5550123#": dtmf("5550123#", -12),
        "breathing -30 dBFS": breathing(rng, -30),
        "coughs -15 dBFS": coughs(rng, -15),
        "music -22 dBFS": music(-22),
        "mmm -22 dBFS": vocal(rng, "mmm", -22),
        "uh -22 dBFS": vocal(rng, "uh", -22),
        "laughter -22 dBFS": vocal(rng, "laugh", -22),
        "voiced cough -18 dBFS": vocal(rng, "cough", -18),
    }
    if speech:
        clips["babble -40 dBFS"] = babble(speech, -40)
        clips["babble -33 dBFS"] = babble(speech, -33)
    return [Sample(f"noise/{name}", "", _line(x)) for name, x in clips.items()]
