"""Favouring the phrases a flow node expects: the trie and bonus on a made-up vocabulary with
made-up scores, the node's phrases reaching the recogniser through a call, and Moonshine on a
recorded clip."""

import numpy as np
import pytest

from fakes.line import RecordingLine
from fakes.manual_time import ManualTime
from ivr.call import Call, CallOptions
from ivr.flows import DIGIT_WORDS, expected_phrases, load_flow
from ivr.providers.base import EndOfTurn, Final, SpeechStarted
from ivr.providers.flow import FlowBrain
from ivr.providers.phrase_bias import BiasCache, PhraseBias, spellings
from ivr.providers.registry import Providers
from ivr.providers.scripted import InstantTts, ScriptedStt, ScriptedSttSession

S = "\u2581"
VOCAB = ["<unk>", "<s>", "</s>", S + "ours", S + "hours", S + "Hours", S + "pick", "up", "le", S + "p", "ick",
         S + "the", S + "check", S + "my", S + "order", S + "mine", ".", S + "h", "o", "ours"]  # fmt: skip
TOKENS = [t.encode() for t in VOCAB]
ID = {t: i for i, t in enumerate(VOCAB)}


def logits(**scores: float) -> np.ndarray:
    """Scores for one step: every token far behind, the named ones (by their text without the
    space mark, `_` for it) as given."""
    out = np.full(len(VOCAB), -20.0, np.float32)
    for name, value in scores.items():
        out[ID[name.replace("_", S)]] = value
    return out


def test_a_phrase_token_close_behind_the_best_wins_and_one_far_behind_does_not():
    cursor = PhraseBias(["hours"], TOKENS, weight=1.0).cursor()
    assert cursor.choose(logits(_ours=0.0, _hours=-0.6)) == ID[S + "hours"]
    cursor = PhraseBias(["hours"], TOKENS, weight=1.0).cursor()
    assert cursor.choose(logits(_ours=0.0, _hours=-1.5)) == ID[S + "ours"]


def test_without_phrases_or_weight_the_choice_is_the_plain_argmax():
    assert BiasCache(0.0).get(("hours",), TOKENS) is None
    assert BiasCache(1.0).get((), TOKENS) is None
    cursor = PhraseBias(["cake"], TOKENS, weight=1.0).cursor()  # no token spells it
    assert cursor.choose(logits(_ours=0.0, _hours=-0.5)) == ID[S + "ours"]


def test_a_phrase_split_across_tokens_is_followed_and_its_continuation_favoured():
    cursor = PhraseBias(["pickup"], TOKENS, weight=1.0).cursor()
    assert cursor.choose(logits(_the=0.0, _pick=-0.5)) == ID[S + "pick"]  # 5 of 7 characters
    assert cursor.choose(logits(le=0.0, up=-0.2)) == ID["up"]  # "pickup", not "pickle"
    assert cursor.bonus == pytest.approx(1.0)


def test_every_way_of_spelling_a_phrase_in_tokens_is_an_edge():
    bias = PhraseBias(["pickup"], TOKENS, weight=7.0)  # a nat a character
    cursor = bias.cursor()
    for token in (S + "p", "ick", "up"):
        assert cursor.choose(logits(**{token.replace(S, "_"): -1.5, "_the": 0.0})) == ID[token]
    assert cursor.bonus == pytest.approx(7.0)


def test_a_continuation_is_favoured_only_after_its_phrase_began():
    cursor = PhraseBias(["pickup"], TOKENS, weight=1.0).cursor()
    assert cursor.choose(logits(_the=0.0)) == ID[S + "the"]
    assert cursor.choose(logits(le=0.0, up=-0.5)) == ID["le"]  # "up" mid-word after "the": no bonus


def test_a_phrase_may_begin_only_at_a_word_boundary_and_in_either_case():
    assert spellings("hours") == (S + "hours", S + "Hours")
    cursor = PhraseBias(["hours"], TOKENS, weight=1.0).cursor()
    assert cursor.choose(logits(_ours=0.0, _Hours=-0.5)) == ID[S + "Hours"]  # a transcript's first word
    bias = PhraseBias(["ours"], TOKENS, weight=1.0)
    cursor = bias.cursor()
    cursor.advance(ID[S + "h"])
    assert cursor.choose(logits(o=0.0, ours=-0.1)) == ID["o"]  # "ours" inside "hours" is no phrase start


def test_a_capitalised_phrase_is_favoured_only_where_a_sentence_begins():
    cursor = PhraseBias(["hours"], TOKENS, weight=1.0).cursor()
    cursor.choose(logits(_the=0.0))
    assert cursor.choose(logits(_ours=0.0, _Hours=-0.5)) == ID[S + "ours"]  # "the Hours": no
    cursor.choose(logits(**{".": 0.0}))
    assert cursor.choose(logits(_ours=0.0, _Hours=-0.5)) == ID[S + "Hours"]  # ". Hours": yes


def test_a_whole_phrase_earns_the_weight_however_it_is_split():
    bias = PhraseBias(["pickup"], TOKENS, weight=1.0)
    for split in ([S + "pick", "up"], [S + "p", "ick", "up"]):
        cursor = bias.cursor()
        for token in split:
            cursor.advance(ID[token])
        assert cursor.bonus == pytest.approx(1.0)
    cursor = bias.cursor()
    # "▁p" is 2 of the 7 characters of "▁pickup": a one-letter start earns little.
    assert cursor.choose(logits(_the=0.0, _p=-0.3)) == ID[S + "the"]


def test_an_abandoned_phrase_has_its_bonus_withdrawn_and_a_finished_one_keeps_it():
    cursor = PhraseBias(["pickup"], TOKENS, weight=1.0).cursor()
    cursor.choose(logits(_pick=0.0))
    assert cursor.bonus == pytest.approx(5 / 7)
    cursor.choose(logits(le=0.0, up=-5.0))  # "pickle": left the phrase
    assert cursor.bonus == pytest.approx(0.0)
    assert cursor.node == 0

    cursor = PhraseBias(["hours"], TOKENS, weight=1.0).cursor()
    cursor.choose(logits(_hours=0.0))
    cursor.choose(logits(**{".": 0.0}))
    assert cursor.bonus == pytest.approx(1.0)


def test_a_phrase_of_several_words_is_favoured_word_after_word():
    cursor = PhraseBias(["check my order"], TOKENS, weight=3.0).cursor()
    assert cursor.choose(logits(_check=0.0)) == ID[S + "check"]
    assert cursor.choose(logits(_mine=0.0, _my=-0.5)) == ID[S + "my"]  # 3 of 15 characters: 0.6
    assert cursor.choose(logits(_the=0.0, _order=-0.9)) == ID[S + "order"]
    assert cursor.changed == 2


def test_a_token_the_model_already_prefers_is_kept_and_not_counted_as_changed():
    cursor = PhraseBias(["hours"], TOKENS, weight=3.0).cursor()
    assert cursor.choose(logits(_hours=0.0, _ours=-0.1)) == ID[S + "hours"]
    assert cursor.changed == 0


def test_a_node_expects_its_routes_then_the_routes_that_apply_everywhere():
    flow = load_flow()
    menu = expected_phrases(flow, flow.nodes["main"])
    assert {"hours", "pickup", "check my order", "parking"} <= set(menu)
    assert menu.index("hours") < menu.index("operator")  # the node's own first
    number = expected_phrases(flow, flow.nodes["check_order"])
    assert set(DIGIT_WORDS) <= set(number) and "operator" in number
    assert "hours" not in number


class ExpectingSession(ScriptedSttSession):
    def __init__(self) -> None:
        super().__init__()
        self.expected: list[tuple[str, ...]] = []

    def expect(self, phrases) -> None:
        self.expected.append(tuple(phrases))


class ExpectingStt(ScriptedStt):
    async def open(self, call=None):
        session = ExpectingSession()
        self.sessions.append(session)
        return session


async def test_the_call_tells_the_recogniser_what_the_flow_node_expects_when_the_caller_speaks():
    line = RecordingLine()
    stt = ExpectingStt()
    flow = load_flow()
    call = Call(line, Providers(stt=stt, tts=InstantTts(ms_per_char=1), brain=FlowBrain(flow)), CallOptions(),
                time=ManualTime())  # type: ignore[arg-type]
    await call.on_event(line.start)
    await line.wait_for(lambda: stt.sessions and call._turn is not None and call._turn.produced)
    session = stt.sessions[0]
    session.speaking = False
    session.push(SpeechStarted(100))
    await line.wait_for(lambda: session.expected)
    assert session.expected[-1] == expected_phrases(flow, flow.nodes["main"])

    session.push(Final("I want to check my order", 100, 1500))
    session.push(EndOfTurn("I want to check my order", 1500))
    await line.wait_for(lambda: call._turn.number == 2 and call._turn.produced)
    session.push(SpeechStarted(3000))
    await line.wait_for(lambda: len(session.expected) == 2)
    assert session.expected[-1] == expected_phrases(flow, flow.nodes["check_order"])
    assert "four" in session.expected[-1]
    await call.close("test over")


async def test_the_turn_gate_passes_the_phrases_to_the_recogniser_it_wraps():
    from ivr.turn.gate import TurnGatedStt

    stt = ExpectingStt()
    gate = await TurnGatedStt(stt, model=None).open()  # type: ignore[arg-type]
    gate.expect(("hours", "pickup"))
    assert stt.sessions[0].expected == [("hours", "pickup")]
    await gate.aclose()
