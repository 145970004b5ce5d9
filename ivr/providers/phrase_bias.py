"""Contextual biasing of a greedy decoder toward the phrases a caller is expected to say.

The words the flow waits for at a node ("hours", "pickup", "check my order", digits) are the
engine's equivalent of Whisper's hotwords for a decoder with no prompt slot (Moonshine): shallow
fusion. While decoding, a token that continues a phrase already begun, or begins one at a word
boundary, gets a bonus added to its log-probability before the greedy choice: its share of the
weight, as its characters are of the shortest phrase it leads into. A whole phrase so earns the
weight however it is split into tokens, and a one-letter start ("▁W" of "where", "▁a" of
"address") almost nothing: a bonus of the whole weight on every token turned "minutes" into
"Menon" and "which folder" into "a witch-folder" (benchmarks/README.md).

The phrases are kept as a trie of characters in the vocabulary's spelling ("▁" for a space), and
every vocabulary token that spells a path down that trie from a node is an edge of that node. So
any way of splitting a phrase into tokens is followed ("▁pickup" as "▁pick" + "up" or as "▁p" +
"ick" + "up"), not just the one a tokenizer would choose. The trie has two roots: phrases as
written mid-sentence (lower case), and capitalised, as the decoder writes the first word of a
sentence; the second is open only there, so "or" mid-sentence is not pushed toward "Order".

Adding the bonus to the raw logits chooses the same token as adding it to their log-softmax:
the softmax's normaliser is the same for every token of a step, so it is not computed. A step
costs a gather over the candidate tokens of at most three nodes (the phrase being written and
the roots), some microseconds beside the decoder's ~5 ms.

When the text leaves a phrase before its end, the bonus given along it is withdrawn from the
running total (`BiasCursor.bonus`, what biasing added to the transcript's log-probability), and
the next token may only begin a new phrase. A greedy decoder cannot take back the tokens the
bonus chose; that is why the weight is small and a one-letter start earns almost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SPACE = "\u2581"
#: The roots of the trie: phrases mid-sentence, and at a sentence's start.
MID, START = 0, 1
SENTENCE_ENDS = (".", "?", "!")


class PhraseBias:
    """Expected phrases compiled against a decoder's vocabulary (token id -> bytes; `SPACE` marks
    a space). Immutable once built: one serves any number of decodes at once. `weight`: what a
    whole phrase earns, in nats."""

    def __init__(self, phrases: Iterable[str], tokens: Sequence[bytes], weight: float) -> None:
        self.weight = float(weight)
        self.phrases = tuple(dict.fromkeys(p for p in (" ".join(p.split()) for p in phrases) if p))
        # The character trie: children by character, where a spelling ends, and the length of
        # the shortest spelling through each node.
        self._children: list[dict[str, int]] = [{}, {}]
        self._ends: list[bool] = [False, False]
        self._shortest: list[int] = [0, 0]
        self._depth: list[int] = [0, 0]
        for phrase in self.phrases:
            lower, capital = spellings(phrase)
            self._insert(MID, lower)
            self._insert(START, capital)
        vocabulary, self._sentence_ends = _vocabulary(tokens)
        longest = max(map(len, vocabulary), default=0)
        # Per node: token id -> (the node it leads to, its bonus); and the same as arrays, for
        # one gather per step.
        self._edges: list[dict[int, tuple[int, float]]] = []
        self._ids: list[np.ndarray] = []
        self._bonus: list[np.ndarray] = []
        for node in range(len(self._children)):
            edges = {}
            for token, child in self._token_edges(node, vocabulary, longest).items():
                share = (self._depth[child] - self._depth[node]) / self._shortest[child]
                edges[token] = (child, self.weight * share)
            self._edges.append(edges)
            self._ids.append(np.fromiter(edges.keys(), np.int64, len(edges)))
            self._bonus.append(np.fromiter((b for _, b in edges.values()), np.float32, len(edges)))

    def _insert(self, root: int, spelling: str) -> None:
        node = root
        for char in spelling:
            child = self._children[node].get(char)
            if child is None:
                child = len(self._children)
                self._children.append({})
                self._ends.append(False)
                self._shortest.append(len(spelling))
                self._depth.append(self._depth[node] + 1)
                self._children[node][char] = child
            node = child
            self._shortest[node] = min(self._shortest[node], len(spelling))
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
        return bool(self.phrases)

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

    __slots__ = ("_bias", "node", "sentence_start", "_given", "bonus", "changed")

    def __init__(self, bias: PhraseBias) -> None:
        self._bias = bias
        self.node = MID  # no phrase begun
        self.sentence_start = True
        self._given = 0.0  # bonus given along the phrase being written
        #: What biasing added to the transcript's log-probability, abandoned phrases withdrawn.
        self.bonus = 0.0
        #: Tokens chosen that the plain argmax would not have chosen.
        self.changed = 0

    def _candidates(self) -> tuple[int, ...]:
        """The nodes whose edges may follow: the phrase being written, then a new phrase."""
        roots = (MID, START) if self.sentence_start else (MID,)
        return roots if self.node in roots else (self.node, *roots)

    def choose(self, logits: np.ndarray) -> int:
        """The greedy choice over `logits` (one step's scores over the vocabulary) with the
        bonus; the cursor then follows the chosen token."""
        bias = self._bias
        best = int(np.argmax(logits))
        token, score = best, float(logits[best])
        for node in self._candidates():
            ids = bias._ids[node]
            if len(ids):
                scores = logits[ids] + bias._bonus[node]
                k = int(np.argmax(scores))
                if float(scores[k]) > score:
                    token, score = int(ids[k]), float(scores[k])
        if token != best:
            self.changed += 1
        self.advance(token)
        return token

    def advance(self, token: int) -> None:
        """Follow a written token: down the trie, or into a new phrase, or back to the root."""
        bias = self._bias
        writing = self.node not in (MID, START)
        edge = bias._edges[self.node].get(token) if writing else None
        if edge is None:
            if writing and not bias._ends[self.node]:
                self.bonus -= self._given  # the phrase was abandoned: its bonus is taken back
            self._given = 0.0
            for root in (MID, START) if self.sentence_start else (MID,):
                edge = bias._edges[root].get(token)
                if edge is not None:
                    break
        self.sentence_start = token in bias._sentence_ends
        if edge is None:
            self.node = MID
            return
        self.node, gain = edge
        self._given += gain
        self.bonus += gain


def spellings(phrase: str) -> tuple[str, str]:
    """A phrase as the decoder writes it mid-sentence (lower case) and at a sentence's start
    (capitalised), after the space that begins a word."""
    lower = phrase.lower().replace(" ", SPACE)
    return SPACE + lower, SPACE + lower[:1].upper() + lower[1:]


#: The last vocabulary read, by the identity of its token list (one model per process): reading
#: 32,000 tokens takes longer than compiling a node's phrases.
_last: tuple[Sequence[bytes], dict[str, list[int]], frozenset[int]] | None = None


def _vocabulary(tokens: Sequence[bytes]) -> tuple[dict[str, list[int]], frozenset[int]]:
    """Token text -> ids, for the tokens that are whole UTF-8 text (a text may have two ids, a
    byte-fallback token and a merged one: either continues a phrase); and the ids of the tokens
    that end a sentence."""
    global _last
    if _last is not None and _last[0] is tokens:
        return _last[1], _last[2]
    vocabulary: dict[str, list[int]] = {}
    ends = set()
    for i, raw in enumerate(tokens):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and not (text.startswith("<") and text.endswith(">")):
            vocabulary.setdefault(text, []).append(i)
            if text.rstrip().endswith(SENTENCE_ENDS):
                ends.add(i)
    _last = (tokens, vocabulary, frozenset(ends))
    return vocabulary, _last[2]
