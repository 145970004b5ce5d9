"""The guard against Whisper's repetition loops on short windows (pure text functions)."""

from ivr.providers.local_stt import first_reading, looks_repeated


def test_a_reading_repeated_to_the_end_is_cut_to_the_first():
    text = "Can I speak to a real person? Can I speak to a real person? Can I speak"
    assert looks_repeated(text)
    assert first_reading(text) == "Can I speak to a real person?"
    assert first_reading("No No No No No") == "No"


def test_ordinary_speech_is_not_a_loop():
    assert not looks_repeated("I'd like to check on my order, please.")
    assert not looks_repeated("My number is four five seven two.")
    assert not looks_repeated("one one two")  # digits may repeat


def test_repeated_digits_are_not_cut_but_sent_to_the_full_decode():
    assert looks_repeated("My number is 1 1 1 1 1 1.")
    assert first_reading("My number is 1 1 1 1 1 1.") is None


# --- a transcript that lost words is decoded again ------------------------------------------------

import numpy as np  # noqa: E402

from ivr.providers.local_stt import lost_words, voiced_ms  # noqa: E402


def tone_then_silence(speech_ms: int, silence_ms: int) -> bytes:
    t = np.arange(8 * speech_ms) / 8000
    speech = (8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()
    return b"\x00\x00" * (8 * silence_ms // 2) + speech + b"\x00\x00" * (8 * silence_ms // 2)


def test_voiced_ms_counts_the_speech_not_the_silence_around_it():
    assert voiced_ms(tone_then_silence(1500, 600)) == 1500
    assert voiced_ms(b"\x00\x00" * 8000) == 0
    assert voiced_ms(b"") == 0


def test_one_word_for_three_seconds_of_speech_is_short():
    assert lost_words("I", 2400, 1.0) == "short"
    assert lost_words("Hi, what time do you open on Saturday?", 2400, 1.0) is None
    # Under a second of speech may be one word.
    assert lost_words("Yes.", 800, 1.0) is None
    assert lost_words("I", 2400, 0) is None  # off


def test_a_loop_on_a_word_said_several_times_is_not_one_reading():
    # "five five five" looped: its first reading is one word for 1.4 s of speech.
    assert lost_words("5 5 5 5 5 5 5 5 5 5 5 5", 1400, 1.0) == "loop"
    # A sentence read twice over fits its speech: keep the first reading.
    text = "Can I speak to a real person? Can I speak to a real person? Can I speak"
    assert lost_words(text, 1700, 1.0) == "repeated"
    assert lost_words("No No No No No", 400, 1.0) == "repeated"
    assert lost_words("My number is 1 1 1 1 1 1.", 2000, 1.0) == "loop"
