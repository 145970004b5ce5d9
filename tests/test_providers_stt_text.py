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
