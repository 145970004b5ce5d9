"""The call-flow brain: YAML format checks and the behaviour of menus, keys, slots and fallbacks."""

from __future__ import annotations

import textwrap

import pytest

from ivr.flows import FlowError, example_path, load_flow, parse_flow
from ivr.providers.base import CallContext, CallerInput, TextDelta, ToolCall
from ivr.providers.flow import FlowBrain, spoken_digits

FLOW = textwrap.dedent(
    """
    greeting: "Hello {From}."
    start: main
    variables: {desk: "+15550001111"}
    nodes:
      main:
        prompt: "Say hours or account, or press 1 or 2."
        routes:
          - match: [hours, "what time"]
            dtmf: "1"
            say: "Nine to five."
          - match: [account, "my account"]
            dtmf: "2"
            goto: account
          - match: ["account manager"]
            say: "Transferring."
            transfer: {to: "sip:manager@pbx.example.com", summary: "manager"}
      account:
        prompt: "Enter your account number, then pound."
        collect: {slot: acct, min: 4, max: 6, next: done}
      done:
        say: "Account {acct:digits} found."
        hangup: true
    anywhere:
      - match: [person, operator]
        dtmf: "0"
        transfer: "{desk}"
    fallback:
      say: "Sorry?"
      retries: 1
      then: {say: "Goodbye.", hangup: true}
    barge_in: {min_speech_ms: 300}
    """
)


async def session(text: str = FLOW, **parameters: str):
    return await FlowBrain(parse_flow(text)).open(CallContext(parameters=parameters))


def said(out) -> str:
    # Deltas are streamed text: concatenated as they come (each flow reply ends with a space).
    return "".join(o.text for o in out if isinstance(o, TextDelta)).strip()


def tools(out) -> list[ToolCall]:
    return [o for o in out if isinstance(o, ToolCall)]


async def test_greeting_fills_call_parameters_and_prompts():
    s = await session(From="+15557654321")
    out = [o async for o in s.greeting()]
    assert said(out) == "Hello +15557654321. Say hours or account, or press 1 or 2."


async def test_menu_matches_speech_by_phrase_and_keys_by_digit():
    s = await session()
    assert said(s.step(CallerInput(text="Hi, what time are you open?"))) == "Nine to five."
    assert s.node.id == "main"
    assert said(s.step(CallerInput(dtmf="1"))) == "Nine to five."
    assert said(s.step(CallerInput(dtmf="2"))) == "Enter your account number, then pound."
    assert s.node.id == "account"


async def test_longest_phrase_wins_and_whole_words_only():
    s = await session()
    out = s.step(CallerInput(text="Can I get my account manager please"))
    assert tools(out)[0].arguments == {"to": "sip:manager@pbx.example.com", "summary": "manager"}
    s = await session()
    # "accountant" contains "account" but is not the word
    assert said(s.step(CallerInput(text="I am an accountant"))) == "Sorry? Say hours or account, or press 1 or 2."


async def test_slot_by_keys_ended_with_pound():
    s = await session()
    s.step(CallerInput(dtmf="2"))
    for key in "1234":
        assert s.step(CallerInput(dtmf=key)) == []  # collecting: no reply yet
    out = s.step(CallerInput(dtmf="#"))
    assert said(out) == "Account 1 2 3 4 found."
    assert [t.name for t in tools(out)] == ["hangup"]
    assert s.slots == {"acct": "1234"}


async def test_slot_by_spoken_digits():
    s = await session()
    s.step(CallerInput(text="my account"))
    out = s.step(CallerInput(text="It's four five seven two nine."))
    assert said(out) == "Account 4 5 7 2 9 found."
    s = await session()
    s.step(CallerInput(text="account"))
    assert said(s.step(CallerInput(text="double three 12"))) == "Account 3 3 1 2 found."


async def test_slot_keys_in_one_message_and_star_starts_over():
    s = await session()
    s.step(CallerInput(dtmf="2"))
    assert s.step(CallerInput(dtmf="99*")) == []
    assert said(s.step(CallerInput(dtmf="5678#"))) == "Account 5 6 7 8 found."


async def test_too_short_a_number_is_a_miss_and_retries_are_limited():
    s = await session()
    s.step(CallerInput(dtmf="2"))
    out = s.step(CallerInput(dtmf="12#"))
    assert said(out) == "Sorry? Enter your account number, then pound."
    out = s.step(CallerInput(text="banana"))
    assert said(out) == "Goodbye."
    assert [t.name for t in tools(out)] == ["hangup"]
    assert s.step(CallerInput(text="hello?")) == []  # the call is over


async def test_anywhere_routes_work_inside_a_slot_and_fill_variables():
    s = await session()
    s.step(CallerInput(dtmf="2"))
    out = s.step(CallerInput(text="Can I talk to a person?"))
    assert tools(out)[0].name == "transfer"
    assert tools(out)[0].arguments["to"] == "+15550001111"


async def test_silence_gets_the_silence_prompt():
    s = await session()
    out = s.step(CallerInput())
    assert said(out).startswith("Are you still there?")


async def test_respond_is_an_async_iterator_of_the_same_step():
    s = await session()
    out = [o async for o in s.respond([], CallerInput(dtmf="1"))]
    assert out == [TextDelta("Nine to five. ")]


def test_reserved_sections_are_kept_for_the_engine():
    assert parse_flow(FLOW).extra == {"barge_in": {"min_speech_ms": 300}}


@pytest.mark.parametrize(
    "change, message",
    [
        ("greetings: hi\n", "unknown top-level key 'greetings'"),
        ("nodes: {a: {say: hi, gotto: b}}\n", "nodes.a: unknown key 'gotto'"),
        ("nodes: {a: {routes: [{match: [x], goto: nowhere}]}}\n", "no node named 'nowhere'"),
        ("nodes: {a: {routes: [{say: hi}]}}\n", "needs `match` phrases or a `dtmf` key"),
        ("nodes: {a: {transfer: 'my desk'}}\n", "is not a phone number"),
        ("nodes: {a: {routes: [{dtmf: '12', say: x}]}}\n", "is not one key"),
        ("nodes: {a: {collect: {slot: x, min: 5, max: 2}}}\n", "min and max"),
        ("nodes: {a: {next: a, hangup: true}}\n", "a node does one of"),
    ],
)
def test_mistakes_are_reported_with_their_place(change, message):
    text = change if change.startswith("nodes") else change + "nodes: {a: {say: hi}}\n"
    with pytest.raises(FlowError, match=message.replace("(", r"\(")):
        parse_flow(text)


def test_example_flow_ships_in_the_package_and_loads():
    assert example_path().is_file()
    flow = load_flow()
    assert flow.name == "Sunrise Bakery"


async def test_example_flow_conversation():
    s = await FlowBrain().open(CallContext())
    greeting = said([o async for o in s.greeting()])
    assert "Sunrise Bakery" in greeting and "press 1" in greeting
    assert "Tuesday to Sunday" in said(s.step(CallerInput(text="What time do you open on Saturday?")))
    assert "order number" in said(s.step(CallerInput(text="Hi, I'd like to check on my order please.")))
    out = s.step(CallerInput(text="My order number is 4572."))
    assert "Order 4 5 7 2" in said(out)
    out = s.step(CallerInput(text="Can I speak to a real person?"))
    assert tools(out)[0].name == "transfer"


def test_spoken_digits():
    assert spoken_digits("four five seven two") == "4572"
    assert spoken_digits("It is 45, 72") == "4572"
    assert spoken_digits("oh triple nine") == "0999"
    assert spoken_digits("no numbers here") == ""
