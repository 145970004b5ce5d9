"""The flow's outbound section (issue 11): both answering-machine paths, and key checking."""

import asyncio

import pytest

from ivr.flows import FlowError, load_flow, parse_flow
from ivr.providers.base import CallContext, TextDelta, ToolCall
from ivr.providers.flow import FlowBrain

BASE = """
greeting: "Hi."
start: main
nodes:
  main:
    prompt: "Menu."
    routes: [{match: bye, say: "Bye.", hangup: true}]
"""


def greet(flow, params):
    async def go():
        session = await FlowBrain(flow).open(CallContext("CA1", "MZ1", params))
        return [o async for o in session.greeting()]

    return asyncio.run(go())


def test_example_flow_has_both_paths():
    flow = load_flow()
    out = {"IvrDirection": "outbound", "name": "Sam", "order_number": "4572"}
    person = greet(flow, {**out, "AnsweredBy": "human"})
    assert not any(isinstance(o, ToolCall) for o in person)
    assert "Hello Sam" in person[0].text and "4 5 7 2" in person[0].text
    machine = greet(flow, {**out, "AnsweredBy": "machine_end_beep"})
    assert isinstance(machine[0], TextDelta) and "Call us back" in machine[0].text
    assert isinstance(machine[-1], ToolCall) and machine[-1].name == "hangup"
    # An inbound call is untouched by the outbound section.
    assert greet(flow, {"AnsweredBy": "machine_end_beep"})[0].text.startswith("Thanks for calling")


def test_machine_without_a_voicemail_message_is_hung_up_on_silently():
    out = greet(parse_flow(BASE), {"IvrDirection": "outbound", "AnsweredBy": "fax"})
    assert out == [ToolCall("hangup", {}, "flow-1")]


@pytest.mark.parametrize("section, message", [
    ("outbound: {voicemial: 'x'}", "unknown key 'voicemial'"),
    ("outbound: {start: nowhere}", "outbound.start: no node named 'nowhere'"),
])
def test_outbound_section_is_checked(section, message):
    with pytest.raises(FlowError, match=message):
        parse_flow(BASE + section + "\n")
