"""What the transcript says about the end of a turn: a caller who stops on "is", "and", "the"
or in the middle of a phone number is almost never done.

Measured on phone-band clips cut mid-sentence (`ivr bench turn`), Smart Turn alone took about
half of such pauses for the end; most of those ended on a word from this list. The rule only
ever says "not done": it makes the wait longer, never shorter.
"""

from __future__ import annotations

import re

#: Words that leave an English sentence open: articles, prepositions, conjunctions, auxiliaries,
#: possessives and fillers; chosen as classes of words, leaving out those that often end a
#: reply ("thank you", "yes I do", "I think so", "hold it").
CONTINUATION_WORDS = frozenset(
    """
    a an the
    to of in on at for with from by about into onto than as via per
    and or but nor because if unless until whether although though while
    is are was were
    i'm i've i'd i'll we're you're they're it's there's
    my your our his their its
    um uh er erm
    """.split()
)

DIGITS = frozenset("zero oh one two three four five six seven eight nine".split())

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    words: list[str] = []
    for token in _WORD.findall(text.lower().replace("-", " ")):
        token = token.strip("'")
        if token.isdigit():
            words += list(token)  # "555" -> three digits
        elif token:
            words.append(token)
    return words


def sounds_unfinished(text: str) -> bool:
    """True when the turn's text stops where a sentence cannot end.

    - the last word is a function word (`CONTINUATION_WORDS`), or the recogniser marked the
      speech as cut off or going on ("-", "...", a trailing comma);
    - it ends with a group of exactly 3 or 6 digits, where a phone number (3-3-4) is read with
      pauses: "five five five" ... "zero one two three".
    """
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(("-", "—", "...", "…", ",", ";", ":")):
        # The recogniser's own mark of speech cut off, or of more to come: Whisper ends a
        # stretch it heard go on with a comma ("The person at extension,", "4, 2,").
        return True
    words = _words(stripped)
    if not words:
        return False
    if words[-1] in CONTINUATION_WORDS:
        return True
    run = 0
    for word in reversed(words):
        if not (word in DIGITS or word.isdigit()):
            break
        run += 1
    return run in (3, 6)


#: First words of a question that stands on its own ("What time do you open?").
QUESTION_STARTS = frozenset(
    "what where when why how who which whose can could would will do does did is are was were may should shall".split()
)
#: A question ending on one of these often has more to come ("Can you tell me ... what time you
#: close?", "Could you give me ... the manager?"): the audio decides those.
OBJECT_PRONOUNS = frozenset("me you him her us them it".split())


def sounds_like_a_question(text: str) -> bool:
    """True when the turn ends with a whole question, as the recogniser heard it: the last
    sentence ends with "?", has a question word or an auxiliary among its first three words
    ("Hi what time are you open?": stretches of speech are transcribed apart, so a greeting may
    lack its full stop), three words or more, and does not end on an object pronoun or a word
    of `CONTINUATION_WORDS`.

    Whisper writes the question mark from the words and the rising voice together; a question
    asked whole is the commonest complete turn on a service line, and the one the caller most
    wants answered at once.
    """
    stripped = text.strip()
    if not stripped.endswith("?"):
        return False
    last = re.split(r"(?<=[.?!])\s+", stripped)[-1]
    words = _words(last)
    return (
        len(words) >= 3
        and any(w in QUESTION_STARTS for w in words[:3])
        and words[-1] not in OBJECT_PRONOUNS
        and not sounds_unfinished(last.rstrip("?"))
    )


#: How a caller who is done closes: "No thanks, that's all." The model doubts such short
#: statements on phone audio (0.01 for that one), which left them to the ceiling.
CLOSINGS = tuple(tuple(c.split()) for c in (
    "that's all", "that is all", "that's it", "that's everything", "goodbye", "bye", "thank you", "thanks",
))


def sounds_like_a_goodbye(text: str) -> bool:
    """True when the turn ends with a closing ("..., that's all.", "Thank you.", "Bye."): the
    caller is done, and the turn ends after the plain timer's silence without the model."""
    if sounds_unfinished(text):
        return False
    words = _words(text)
    return any(tuple(words[-len(c):]) == c for c in CLOSINGS)

