"""Word timings from piper's phoneme durations: the pure part, on a made-up phoneme map."""

from __future__ import annotations

from ivr.providers.local_tts import spoken_words, word_spans, words_by_sentence

# BOS, pad, EOS, space, four sounds and a comma; one id each, as in piper's voices.
ID_MAP = {"^": [1], "_": [0], "$": [2], " ": [3], "h": [4], "i": [5], "t": [6], "o": [7], ",": [8]}


def ids_for(phonemes: list[str]) -> list[int]:
    ids = [1, 0]
    for p in phonemes:
        if p in ID_MAP:
            ids += ID_MAP[p] + [0]
    return ids + [2]


def test_word_spans_run_from_first_sound_to_last_leaving_out_pauses():
    phonemes = ["h", "i", ",", " ", "t", "o", "."]  # "." is not in the map: piper drops it
    ids = ids_for(phonemes)
    samples = [100] * len(ids)  # each id (phoneme or pad) 100 samples; at 1 kHz, 100 ms
    # BOS+pad 0-200; h 200-400, i 400-600, "," 600-800 (a pause), space 800-1000; t, o to 1400.
    assert word_spans(phonemes, samples, ID_MAP, 1000) == [(200, 600), (1000, 1400)]


def test_word_spans_scale_samples_to_ms():
    phonemes = ["t", "o"]
    samples = [2205] * len(ids_for(phonemes))
    assert word_spans(phonemes, samples, ID_MAP, 22050) == [(200, 600)]


def test_spoken_words_count_groups_with_a_sound():
    assert spoken_words(["h", "i", ",", " ", "t", "o"]) == 2
    assert spoken_words([",", " ", "t", " ", "."]) == 1
    assert spoken_words([]) == 0


def test_words_are_shared_out_over_sentences_only_when_they_line_up():
    sentences = [["h", "i", "."], ["t", "o", " ", "h", "i", "!"]]
    assert words_by_sentence("Hi. To him!", sentences) == [["Hi."], ["To", "him!"]]
    # "1234" spoken as four words: no one-to-one match, so no timings at all.
    assert words_by_sentence("Order 1234.", [["h", " ", "t", " ", "t", " ", "h", " ", "i"]]) is None
