"""Digits as callers say them, whatever the recogniser wrote.

"five five five, zero one two three", "5 0 1 2 3", "555-0123", "double five five oh one two
three", "forty seven twenty nine" and "four thousand seven hundred twenty nine" all reach a
digits slot as the digits said. Pure text functions; `ivr.providers.flow` fills slots with them.

Written by hand: number-word parsers on PyPI (word2number, text2num) read a whole phrase as one
cardinal ("five five five" is an error or 15 to them), while a caller reading a number out says
digit after digit, pairs, or now and then a cardinal, in one breath.
"""

from __future__ import annotations

import re

UNITS = {
    "zero": 0, "oh": 0, "o": 0, "nought": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
#: The digit words a recogniser is told to listen for at a digits slot (ivr.flows.expected_phrases):
#: UNITS' words but the one letter "o", which a bias would push into every word it begins, and
#: "nought", rare on the line.
DIGIT_WORDS = tuple(word for word in UNITS if word not in ("o", "nought"))
TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"hundred": 100, "thousand": 1000}
REPEATS = {"double": 2, "triple": 3}
#: Words a recogniser writes for a digit it heard ("four two nine" as "for two nine"): read as
#: digits only between two digits, so "calling for 4729" keeps its "for".
SOUND_ALIKES = {"to": "2", "too": "2", "for": "4", "won": "1", "ate": "8"}

_TOKEN = re.compile(r"[a-z]+|[0-9]+")


def spoken_digits(text: str) -> str:
    """Every digit the caller said, in order: "My number is four five seven two" -> "4572"."""
    tokens = _TOKEN.findall(text.lower().replace("-", " "))
    out: list[str] = []
    number: int | None = None  # a cardinal being read ("forty seven", "five hundred twelve")
    repeat = 1

    def flush() -> None:
        nonlocal number
        if number is not None:
            out.append(str(number))
            number = None

    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.isdigit():
            flush()
            out.append(token * repeat if len(token) == 1 else token)
            repeat = 1
        elif token in UNITS:
            value = UNITS[token]
            if number is not None and number % 10 == 0 and number % 100 >= 20 and value:
                number += value  # "forty" "seven"
            elif number is not None and number >= 100 and number % 100 == 0 and token != "oh":
                number += value  # "five hundred" "two", "four thousand" "seven" "hundred"
            else:
                flush()
                if following in SCALES:
                    number = value
                else:
                    out.append(str(value) * repeat)
            repeat = 1
        elif token in TEENS or token in TENS:
            value = TEENS.get(token) or TENS[token]
            if number is not None and number % 100 == 0 and number:
                number += value  # "five hundred" "twelve"
            else:
                flush()
                number = value
            repeat = 1
        elif token in SCALES and number is not None:
            if token == "thousand":
                number *= 1000
            else:  # "four thousand seven" "hundred": the hundreds of what follows the thousands
                number = number // 1000 * 1000 + number % 1000 * 100
        elif token == "and" and number is not None and number >= 100 and number % 100 == 0:
            continue  # "five hundred and twelve"
        elif token in REPEATS:
            flush()
            repeat = REPEATS[token]
        elif token in SOUND_ALIKES and _is_digit_word(tokens[i - 1] if i else "") and _is_digit_word(following):
            flush()
            out.append(SOUND_ALIKES[token])
        else:
            flush()
    flush()
    return "".join(out)


def _is_digit_word(token: str) -> bool:
    return token.isdigit() or token in UNITS or token in TEENS or token in TENS
