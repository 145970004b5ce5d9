"""Digits as callers say them reach a digits slot as digits, whatever the recogniser wrote."""

from hypothesis import given
from hypothesis import strategies as st

from ivr.flows.digits import spoken_digits

WORDS = "zero one two three four five six seven eight nine".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
SEPARATORS = st.sampled_from([" ", ", ", ". ", " - ", "... "])
digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=12)


def two_digit_words(n: int) -> str:
    if n < 10:
        return WORDS[n]
    if n < 20:
        return TEENS[n - 10]
    return TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + WORDS[n % 10])


def test_the_recognisers_ways_of_writing_a_number():
    assert spoken_digits("five five five, zero one two three") == "5550123"
    assert spoken_digits("555-0123") == "5550123"
    assert spoken_digits("5 0 1 2 3") == "50123"
    assert spoken_digits("four, seven") == "47"
    assert spoken_digits("Four. 7 2. 9.") == "4729"
    assert spoken_digits("4,729") == "4729"
    assert spoken_digits("My order number is 45 7 2") == "4572"
    assert spoken_digits("double five five oh one two three") == "5550123"
    assert spoken_digits("oh triple nine") == "0999"


def test_numbers_read_as_pairs_and_cardinals():
    assert spoken_digits("forty seven twenty nine") == "4729"
    assert spoken_digits("nineteen eighty four") == "1984"
    assert spoken_digits("four thousand seven hundred twenty nine") == "4729"
    assert spoken_digits("five hundred and twelve") == "512"
    assert spoken_digits("three oh seven") == "307"
    assert spoken_digits("two thousand and five") == "2005"


def test_sound_alikes_count_only_between_digits():
    assert spoken_digits("four to nine") == "429"
    assert spoken_digits("seven for one") == "741"
    assert spoken_digits("I'm calling for 4729") == "4729"
    assert spoken_digits("I want to check my order") == ""
    assert spoken_digits("no numbers here") == ""


@given(digit_strings, st.data())
def test_digits_spelled_one_by_one_come_back(digits, data):
    words = [data.draw(st.sampled_from(["zero", "oh"])) if d == "0" else WORDS[int(d)] for d in digits]
    text = words[0] + "".join(data.draw(SEPARATORS) + w for w in words[1:])
    assert spoken_digits(text) == digits


@given(digit_strings, st.data())
def test_digits_as_numerals_in_any_grouping_come_back(digits, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(digits) - 1)), max_size=len(digits))))
    groups = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)]) if a < b]
    text = "My number is " + "".join(g + data.draw(SEPARATORS) for g in groups)
    assert spoken_digits(text) == digits


@given(st.lists(st.integers(10, 99), min_size=1, max_size=5), st.data())
def test_numbers_read_in_pairs_come_back(pairs, data):
    text = data.draw(SEPARATORS).join(two_digit_words(n) for n in pairs)
    assert spoken_digits(text) == "".join(str(n) for n in pairs)


@given(st.lists(st.sampled_from(WORDS + ["0", "1", "9", "42"]), min_size=1, max_size=10))
def test_a_mix_of_words_and_numerals_keeps_every_digit_in_order(tokens):
    text = " ".join(tokens)
    expected = "".join(str(WORDS.index(t)) if t in WORDS else t for t in tokens)
    assert spoken_digits(text) == expected
