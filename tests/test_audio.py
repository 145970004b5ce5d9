import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scipy.signal import freqz, upfirdn

from ivr.audio import (
    FRAME_BYTES,
    SUPPORTED_RATES,
    Framer,
    PhoneEncoder,
    Resampler,
    group_delay_ms,
    pcm16_to_ulaw,
    resample,
    ulaw_to_pcm16,
)
from ivr.audio.resample import PASS_EDGE, STOPBAND_DB, filter_taps

pcm_bytes = st.binary(max_size=4000).map(lambda b: b[: len(b) // 2 * 2])


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 20000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def rms_db(pcm: bytes, ref: float) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    return 20 * np.log10(np.sqrt(np.mean(x**2)) / ref + 1e-12)


# --- G.711 ---------------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_ulaw_decode_encode_is_identity_on_codes(ulaw):
    # 0x7f and 0xff both mean zero; every other code survives a round trip exactly.
    back = pcm16_to_ulaw(ulaw_to_pcm16(ulaw))
    assert len(back) == len(ulaw)
    assert back == ulaw.replace(b"\x7f", b"\xff")


@given(pcm_bytes)
def test_pcm_round_trip_error_is_within_mu_law_step(pcm):
    back = np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(pcm)), "<i2").astype(int)
    x = np.frombuffer(pcm, "<i2").astype(int)
    assert len(back) == len(x)
    # mu-law quantisation error grows with amplitude: at most ~1/16 of the value, plus a floor.
    assert np.all(np.abs(back - x) <= np.abs(x) // 16 + 132)


# --- resampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 48000])
def test_5khz_tone_leaves_nothing_audible_below_4khz(rate):
    """5 kHz cannot exist at 8 kHz; without a filter it folds back to 3 kHz at full level."""
    out = resample(tone(5000, rate), rate, 8000)
    # Steady state only: the tone's abrupt start and end are broadband clicks, not aliasing.
    assert rms_db(out[800:-800], 20000 / np.sqrt(2)) < -60


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 48000])
def test_telephone_band_passes_unchanged(rate):
    for freq in (300, 1000, 3400):
        out = resample(tone(freq, rate), rate, 8000)
        assert abs(rms_db(out[400:-400], 20000 / np.sqrt(2))) < 0.5, freq


@pytest.mark.parametrize("rate_in,rate_out", [(8000, 16000), (8000, 24000), (22050, 16000), (24000, 16000)])
def test_resampled_tone_is_time_aligned(rate_in, rate_out):
    out = np.frombuffer(resample(tone(1000, rate_in), rate_in, rate_out), "<i2").astype(float)
    assert len(out) == rate_out
    expected = 20000 * np.sin(2 * np.pi * 1000 * np.arange(len(out)) / rate_out)
    assert np.max(np.abs(out[200:-200] - expected[200:-200])) < 200


@pytest.mark.parametrize("rate_in", SUPPORTED_RATES)
@pytest.mark.parametrize("rate_out", [8000, 16000])
def test_stream_output_keeps_pace_with_input(rate_in, rate_out):
    """Each 20 ms in gives 20 ms out at once: no hidden block buffering adds latency."""
    r = Resampler(rate_in, rate_out)
    chunk = tone(440, rate_in, 0.02, 8000)
    total_in = 0
    total_out = 0
    for _ in range(50):
        total_in += len(chunk) // 2
        total_out += len(r.process(chunk)) // 2
        owed = total_in * rate_out / rate_in
        # At most one input period short of exact pace (a fraction of a millisecond).
        assert owed - total_out <= rate_out / 1000, (total_in, total_out)
    # The filter's own delay is the only one, and it is small.
    assert group_delay_ms(rate_in, rate_out) < 5


CONVERSIONS = [(a, b) for a in SUPPORTED_RATES for b in SUPPORTED_RATES if a != b]


@pytest.mark.parametrize("rate_in,rate_out", CONVERSIONS)
def test_filter_is_flat_in_the_passband_and_60db_down_past_nyquist(rate_in, rate_out):
    """The response of the taps the stream uses: flat to 0.85 of the lower Nyquist, and nothing
    above it (which would fold back, or be an image of the input) louder than -60 dB."""
    up, down, h = filter_taps(rate_in, rate_out)
    nyq = min(rate_in, rate_out) / 2
    w, resp = freqz(h / up, worN=1 << 16, fs=rate_in * up)
    db = 20 * np.log10(np.abs(resp) + 1e-12)
    assert np.ptp(db[w <= PASS_EDGE * nyq]) < 0.2
    assert db[w >= nyq].max() < -STOPBAND_DB


@pytest.mark.parametrize("rate_in,rate_out", CONVERSIONS)
def test_stream_of_frames_equals_filtering_the_whole_signal(rate_in, rate_out):
    """Continuity across chunk boundaries: 20 ms frames through the stream give what scipy's
    upfirdn gives for the whole signal at once, sample for sample (up to rounding)."""
    x = np.random.default_rng(rate_in + rate_out).normal(0, 6000, rate_in // 4).clip(-32768, 32767).astype("<i2")
    r = Resampler(rate_in, rate_out)
    step = rate_in // 50
    got = np.frombuffer(b"".join(r.process(x[i : i + step].tobytes()) for i in range(0, len(x), step)), "<i2")
    up, down, h = filter_taps(rate_in, rate_out)
    want = np.clip(np.rint(upfirdn(h, x.astype(np.float64), up, down)), -32768, 32767)
    # Everything but the last, incomplete period of the conversion (`down` inputs) is out.
    assert len(got) > len(x) * rate_out // rate_in - up
    assert np.max(np.abs(got - want[: len(got)])) <= 1


@pytest.mark.parametrize("rate_in", [16000, 22050, 24000, 44100, 48000])
def test_tones_above_4khz_do_not_fold_into_the_phone_band(rate_in):
    for freq in (4000, 4500, 6000, 9000, rate_in / 2 - 500):
        pcm = tone(freq, rate_in, 0.5)
        r = Resampler(rate_in, 8000)
        out = b"".join(r.process(pcm[i : i + rate_in // 25]) for i in range(0, len(pcm), rate_in // 25))
        assert rms_db(out[800:-800], 20000 / np.sqrt(2)) < -STOPBAND_DB + 1, freq


def test_upsampling_leaves_no_image_above_4khz():
    """8 -> 16 kHz: a 3 kHz tone must not come with its mirror image at 5 kHz."""
    r = Resampler(8000, 16000)
    pcm = tone(3000, 8000, 0.5)
    out = np.frombuffer(b"".join(r.process(pcm[i : i + 320]) for i in range(0, len(pcm), 320)), "<i2")
    spectrum = np.abs(np.fft.rfft(out[1000:7000] * np.hanning(6000)))
    freqs = np.fft.rfftfreq(6000, 1 / 16000)
    tone_level = spectrum[np.argmin(np.abs(freqs - 3000))]
    image = spectrum[(freqs > 4000)].max()
    assert 20 * np.log10(image / tone_level) < -STOPBAND_DB


@settings(max_examples=60)
@given(st.sampled_from(SUPPORTED_RATES), st.sampled_from(SUPPORTED_RATES), st.lists(st.integers(0, 700), max_size=20))
def test_chunking_does_not_change_the_output(rate_in, rate_out, cuts):
    pcm = tone(700, rate_in, 0.1, 9000)
    whole = Resampler(rate_in, rate_out)
    expected = whole.process(pcm) + whole.flush()
    pieces = Resampler(rate_in, rate_out)
    out = b""
    pos = 0
    for c in cuts:
        out += pieces.process(pcm[pos : pos + 2 * c])
        pos = min(len(pcm), pos + 2 * c)
    out += pieces.process(pcm[pos:]) + pieces.flush()
    a = np.frombuffer(out, "<i2").astype(int)
    b = np.frombuffer(expected, "<i2").astype(int)
    assert len(a) == len(b)
    assert np.max(np.abs(a - b), initial=0) <= 1  # float32 rounding only


def test_unsupported_rate_is_refused():
    with pytest.raises(ValueError, match="11025"):
        Resampler(11025, 8000)


# --- framing -------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=500), max_size=30))
def test_framer_emits_exact_frames_and_loses_nothing(chunks):
    f = Framer()
    frames = [fr for c in chunks for fr in f.push(c)]
    assert all(len(fr) == FRAME_BYTES for fr in frames)
    total = b"".join(chunks)
    assert b"".join(frames) == total[: len(frames) * FRAME_BYTES]
    assert f.pending == len(total) - len(frames) * FRAME_BYTES
    tail = f.flush()
    if len(total) % FRAME_BYTES:
        assert len(tail) == 1 and len(tail[0]) == FRAME_BYTES
        assert tail[0].startswith(total[len(frames) * FRAME_BYTES :])
    else:
        assert tail == []


@given(st.sampled_from([16000, 22050, 24000, 48000]), st.integers(1, 200))
def test_phone_encoder_frame_count_matches_duration(rate, ms):
    enc = PhoneEncoder(rate)
    pcm = tone(500, rate, ms / 1000, 5000)
    frames = enc.push(pcm) + enc.flush()
    assert all(len(f) == FRAME_BYTES for f in frames)
    n_out = len(pcm) // 2 * 8000 // rate
    # Every output sample is there; the filter tail and padding add at most one frame.
    assert n_out <= len(frames) * FRAME_BYTES <= n_out + group_delay_ms(rate, 8000) * 8 + 2 * FRAME_BYTES
