"""Contextual biasing of a greedy decoder toward the phrases a caller is expected to say.

The words the flow waits for at a node ("hours", "pickup", "check my order", digits) are the
engine's equivalent of Whisper's hotwords for a decoder with no prompt slot (Moonshine): shallow
fusion. While decoding, a token that continues a phrase already begun, or begins one at a word
boundary, gets `weight` added to its log-probability before the greedy choice.

The phrases are kept as a trie of characters in the vocabulary's spelling ("▁" for a space; each
phrase as written mid-sentence and capitalised, as the first word of a transcript is), and every
vocabulary token that spells a path down that trie from a node is an edge of that node. So any
way of splitting a phrase into tokens is followed ("▁pickup" as "▁pick" + "up" or as "▁p" +
"ick" + "up"), not just the one a tokenizer would choose.

Adding the bonus to the raw logits chooses the same token as adding it to their log-softmax:
the softmax's normaliser is the same for every token of a step, so it is not computed. A step
costs two gathers over the candidate tokens (the current node's edges and the phrase starts),
a few microseconds beside the decoder's ~5 ms.

When the text leaves a phrase before its end, the bonus given along it is withdrawn from the
running total (`BiasCursor.bonus`, what biasing added to the transcript's log-probability), and
the next token may only begin a new phrase.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SPACE = "\u2581"


class PhraseBias:
    """Expected phrases compiled against a decoder's vocabulary (token id -> bytes; `SPACE` marks
    a space). Immutable once built: one serves any number of decodes at once."""

    def __init__(self, phrases: Iterable[str], tokens: Sequence[bytes], weight: float) -> None:
        self.weight = float(weight)
        self.phrases = tuple(dict.fromkeys(p for p in (" ".join(p.split()) for p in phrases) if p))
        # The character trie: children by character, and where a spelling ends.
        self._children: list[dict[str, int]] = [{}]
        self._ends: list[bool] = [False]
        for phrase in self.phrases:
            for spelling in spellings(phrase):
                self._insert(spelling)
        # Edges: node -> (token ids, nodes they lead to), as arrays for a gather per step.
        vocabulary = _vocabulary(tokens)
        longest = max(map(len, vocabulary), default=0)
        self._edges: list[dict[int, int]] = [self._token_edges(n, vocabulary, longest) for n in range(len(self._children))]
        self._ids = [np.fromiter(e.keys(), np.int64, len(e)) for e in self._edges]

    def _insert(self, spelling: str) -> None:
        node = 0
        for char in spelling:
            child = self._children[node].get(char)
            if child is None:
                child = len(self._children)
                self._children.append({})
                self._ends.append(False)
                self._children[node][char] = child
            node = child
        self._ends[node] = True

    def _token_edges(self, node: int, vocabulary: dict[str, list[int]], longest: int) -> dict[int, int]:
        """Every token whose text spells a path from `node`: walk the trie below it, as deep as
        the longest token, looking up the text of each path in the vocabulary."""
        edges: dict[int, int] = {}
        stack = [(node, "")]
        while stack:
            at, text = stack.pop()
            for char, child in self._children[at].items():
                spelled = text + char
                for token in vocabulary.get(spelled, ()):
                    edges[token] = child
                if len(spelled) < longest:
                    stack.append((child, spelled))
        return edges

    def __bool__(self) -> bool:
        return len(self._children) > 1

    def cursor(self) -> "BiasCursor":
        """The state of one decode."""
        return BiasCursor(self)


class BiasCache:
    """Compiled phrase sets by their phrases, for one vocabulary and weight: a flow has a handful
    of nodes, each compiled once (~10 ms) and then shared by every call."""

    def __init__(self, weight: float, size: int = 64) -> None:
        self.weight = weight
        self.size = size
        self._compiled: dict[tuple[str, ...], PhraseBias] = {}

    def get(self, phrases: tuple[str, ...], tokens: Sequence[bytes]) -> PhraseBias | None:
        """None when there is nothing to favour (no phrases, or a weight of 0)."""
        if not phrases or self.weight <= 0:
            return None
        bias = self._compiled.get(phrases)
        if bias is None:
            bias = PhraseBias(phrases, tokens, self.weight)
            if len(self._compiled) >= self.size:
                self._compiled.clear()
            self._compiled[phrases] = bias
        return bias


class BiasCursor:
    """Where one greedy decode stands in the phrase trie; `choose` picks each token."""

    __slots__ = ("_bias", "node", "_given", "bonus", "changed")

    def __init__(self, bias: PhraseBias) -> None:
        self._bias = bias
        self.node = 0  # the root: no phrase begun
        self._given = 0.0  # bonus given along the phrase being written
        #: What biasing added to the transcript's log-probability, abandoned phrases withdrawn.
        self.bonus = 0.0
        #: Tokens chosen that the plain argmax would not have chosen.
        self.changed = 0

    def choose(self, logits: np.ndarray) -> int:
        """The greedy choice over `logits` (one step's scores over the vocabulary) with the
        bonus; the cursor then follows the chosen token."""
        best = int(np.argmax(logits))
        bias = self._bias
        token, score = best, float(logits[best])
        # Continuing the phrase begun, or beginning one (every root edge starts a word).
        for node in (self.node, 0) if self.node else (0,):
            ids = bias._ids[node]
            if len(ids):
                scores = logits[ids]
                k = int(np.argmax(scores))
                if float(scores[k]) + bias.weight > score:
                    token, score = int(ids[k]), float(scores[k]) + bias.weight
        if token != best:
            self.changed += 1
        self.advance(token)
        return token

    def advance(self, token: int) -> None:
        """Follow a written token: down the trie, or to a new phrase, or back to the root."""
        bias = self._bias
        child = bias._edges[self.node].get(token) if self.node else None
        if child is None:
            if self.node and not bias._ends[self.node]:
                self.bonus -= self._given  # the phrase was abandoned: its bonus is taken back
            self._given = 0.0
            child = bias._edges[0].get(token)
        if child is None:
            self.node = 0
            return
        self.node = child
        self._given += bias.weight
        self.bonus += bias.weight


def spellings(phrase: str) -> tuple[str, ...]:
    """A phrase as the decoder may write it: after a space, in lower case and capitalised."""
    lower = phrase.lower()
    return tuple(dict.fromkeys(SPACE + p.replace(" ", SPACE) for p in (lower, lower[:1].upper() + lower[1:])))


#: The last vocabulary read, by the identity of its token list (one model per process): reading
#: 32,000 tokens takes longer than compiling a node's phrases.
_last: tuple[Sequence[bytes], dict[str, list[int]]] | None = None


def _vocabulary(tokens: Sequence[bytes]) -> dict[str, list[int]]:
    """Token text -> ids, for the tokens that are whole UTF-8 text. A text may have two ids (a
    byte-fallback token and a merged one for "a"): either continues a phrase."""
    global _last
    if _last is not None and _last[0] is tokens:
        return _last[1]
    vocabulary: dict[str, list[int]] = {}
    for i, raw in enumerate(tokens):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and not (text.startswith("<") and text.endswith(">")):
            vocabulary.setdefault(text, []).append(i)
    _last = (tokens, vocabulary)
    return vocabulary
