"""The OpenAI brain: its HTTP client (aiohttp) against the fake API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import struct
from urllib.parse import urlsplit

import pytest

from fakes.openai_api import FakeOpenAI, Reply
from ivr.config import ConfigError, Settings
from ivr.flows import parse_flow
from ivr.providers import registry
from ivr.providers.base import CallContext, CallerInput, TextDelta, ToolCall, Turn
from ivr.providers.openai_chat import OpenAIBrain, llm_config
from live_server import serve

KEY = "sk-test"
FLOW = """
greeting: "Thanks for calling {shop}."
variables: {shop: Sunrise Bakery, staff: "+15550100123"}
nodes: {main: {say: hi}}
llm: {model: gpt-test, temperature: 0.2, first_token_timeout: 0.5, fallback: "One moment, please say that again."}
system_prompt: You answer the phone for a bakery.
transfers: {staff: "{staff}"}
tools:
  - name: check_order
    description: Look an order up.
    parameters: {type: object, properties: {number: {type: string}}, required: [number]}
"""


@pytest.fixture
def fake():
    f = FakeOpenAI(KEY)
    with serve(f.app) as url:
        f.url = url + "/v1"
        yield f


def brain(fake, key=KEY, url: str | None = None) -> OpenAIBrain:
    flow = parse_flow(FLOW)
    return OpenAIBrain(key, url or fake.url, "gpt-4o-mini", llm_config(flow.extra, flow.greeting, flow.variables))


async def answer(b: OpenAIBrain, text: str | None = "hi", history=()) -> list:
    session = await b.open(CallContext(call_sid="CA1", parameters={"From": "+15550001111"}))
    return [o async for o in session.respond(list(history), CallerInput(text=text))]


async def test_text_streams_in_deltas_and_tool_calls_are_assembled(fake):
    fake.responder = lambda body: Reply("Let me put you through.", [("transfer", {"target": "staff", "summary": "wants a cake"})])
    out = await answer(brain(fake), "a person please",
                       history=[Turn("bot", "Thanks for calling, we open at", interrupted=True), Turn("caller", "hello")])
    deltas = [o.text for o in out if isinstance(o, TextDelta)]
    assert len(deltas) > 1 and "".join(deltas) == "Let me put you through."
    assert out[-1] == ToolCall("transfer", {"to": "+15550100123", "summary": "wants a cake"}, "call_0")
    body = fake.requests[-1]
    assert body["model"] == "gpt-test" and body["temperature"] == 0.2 and body["stream"] is True
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "assistant", "user", "user"]
    assert "interrupted" in body["messages"][1]["content"] and "+15550001111" in body["messages"][0]["content"]
    names = [t["function"]["name"] for t in body["tools"]]
    assert names == ["transfer", "hangup", "send_dtmf", "check_order"]
    assert body["tools"][0]["function"]["parameters"]["properties"]["target"]["enum"] == ["staff"]


async def test_greeting_is_the_flows_with_its_variables(fake):
    session = await brain(fake).open(CallContext())
    assert [o.text async for o in session.greeting()] == ["Thanks for calling Sunrise Bakery."]


async def test_a_429_is_retried_once(fake):
    fake.faults.append("429")
    out = await answer(brain(fake))
    assert "".join(o.text for o in out if isinstance(o, TextDelta)) == "Sorry, could you say that again?"
    assert len(fake.requests) == 2 and not fake.faults  # the 429, then the answer


async def test_a_stalled_stream_gets_one_retry_then_a_spoken_fallback(fake):
    fake.faults.extend(["stall_first", "stall"])
    out = await answer(brain(fake))
    assert out == [TextDelta("One moment, please say that again.")]
    assert len(fake.requests) == 2  # one retry, no more


async def test_a_stall_then_a_good_answer(fake):
    fake.faults.append("stall")
    fake.responder = lambda body: Reply("Here I am.")
    out = await answer(brain(fake))
    assert "".join(o.text for o in out) == "Here I am."


async def test_429_twice_means_the_fallback_line_and_the_call_goes_on(fake):
    fake.faults.extend(["429", "500"])
    out = await answer(brain(fake))
    assert out == [TextDelta("One moment, please say that again.")]


async def test_a_bad_key_fails_at_start_up_naming_the_variable(fake):
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await brain(fake, key="sk-wrong").load()


async def test_a_bad_key_mid_call_is_logged_and_the_caller_hears_the_fallback(fake, caplog):
    out = await answer(brain(fake, key="sk-wrong"))
    assert out == [TextDelta("One moment, please say that again.")]
    assert "OPENAI_API_KEY" in caplog.text


def test_flow_errors_name_the_key():
    with pytest.raises(ConfigError, match="transfers.boss"):
        llm_config({"transfers": {"boss": "call me"}})
    with pytest.raises(ConfigError, match="llm"):
        llm_config({"llm": {"modle": "x"}})
    with pytest.raises(ConfigError, match=r"tools\[0\]"):
        llm_config({"tools": [{"name": "hangup"}]})


def test_registry_defaults_follow_the_keys(fake):
    settings = Settings.from_env({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake.url})
    assert registry.choice(settings, "IVR_BRAIN") == "openai"
    brain = registry.BRAINS["openai"](settings, None)
    assert type(brain.primary).__name__ == "OpenAIBrain" and brain.backup is not None  # the example flow stands in
    assert registry.choice(Settings.from_env({}), "IVR_BRAIN") == "flow"
    assert registry.choice(Settings.from_env({"OPENAI_API_KEY": KEY, "IVR_BRAIN": "flow"}), "IVR_BRAIN") == "flow"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        registry.build(Settings.from_env({"IVR_BRAIN": "openai", "IVR_STT": "local", "IVR_TTS": "local"}))


async def test_an_error_event_before_the_first_word_is_retried(fake):
    fake.faults.append("error_first")
    fake.responder = lambda body: Reply("Here I am.")
    out = await answer(brain(fake))
    assert "".join(o.text for o in out) == "Here I am."
    assert len(fake.requests) == 2


async def test_an_error_event_after_words_keeps_what_was_said(fake):
    fake.faults.append("error_after_text")
    fake.responder = lambda body: Reply("We open at seven tomorrow.")
    out = await answer(brain(fake))
    assert "".join(o.text for o in out) == "We open "
    assert len(fake.requests) == 1  # words were spoken: a retry would repeat them


async def test_answers_reuse_one_connection_and_a_reply_left_early_closes_it(fake):
    b = brain(fake)
    fake.responder = lambda body: Reply("We open at seven tomorrow.")
    await answer(b)
    await answer(b)
    assert fake.client_ports[0] == fake.client_ports[1]  # [DONE], then the body's end: back to the pool
    fake.faults.append("stall_after_text")
    session = await b.open(CallContext(call_sid="CA1"))
    replies = session.respond([], CallerInput(text="hi"))
    assert await replies.__anext__() == TextDelta("We ")
    await replies.aclose()  # the caller talked over the bot
    for _ in range(100):
        if fake.streams_left:
            break
        await asyncio.sleep(0.02)
    assert fake.streams_left == 1  # the server saw the connection go: it can stop generating
    await answer(b)
    assert fake.client_ports[3] != fake.client_ports[0]


class ResettingRelay:
    """A TCP relay in front of the fake that, once armed, resets the next pooled connection as a
    new request arrives on it: what a server whose keep-alive ran out at that instant does."""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.armed, self.connections, self.resets = target_port, False, 0, 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _relay(self, reader, writer) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        answered = False

        async def down() -> None:
            nonlocal answered
            while data := await up_reader.read(65536):
                answered = True
                writer.write(data)
        pump = asyncio.create_task(down())
        try:
            while data := await reader.read(65536):
                if answered and self.armed:
                    self.armed, self.resets = False, self.resets + 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()  # RST, the request unread
                    return
                up_writer.write(data)
        finally:
            pump.cancel()
            up_writer.close()
            writer.close()


async def test_a_pooled_connection_reset_as_the_request_goes_is_sent_again_on_a_new_one(fake):
    relay = ResettingRelay(urlsplit(fake.url).port)
    b = brain(fake, url=await relay.start())
    fake.responder = lambda body: Reply("We open at seven tomorrow.")
    assert "".join(o.text for o in await answer(b)) == "We open at seven tomorrow."
    relay.armed = True
    assert "".join(o.text for o in await answer(b)) == "We open at seven tomorrow."
    assert relay.resets == 1 and relay.connections == 2 and len(fake.requests) == 2
    assert b.health.up  # one reset is not an outage
    relay.server.close()
    await relay.server.wait_closed()


async def test_organization_and_project_headers_come_from_the_environment(fake, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-bakery")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_phone")
    await answer(brain(fake))
    headers = fake.headers[-1]
    assert headers["openai-organization"] == "org-bakery" and headers["openai-project"] == "proj_phone"
    assert headers["authorization"] == "Bearer sk-test" and headers["content-type"] == "application/json"


def test_the_proxy_comes_from_the_environment_once(monkeypatch):
    from ivr.providers.openai_http import OpenAIHttp

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert OpenAIHttp("sk", "https://api.openai.com/v1").proxy == "http://proxy.example:3128"
    assert OpenAIHttp("sk", "http://127.0.0.1:8000/v1").proxy is None  # NO_PROXY
    monkeypatch.delenv("HTTPS_PROXY")
    assert OpenAIHttp("sk", "https://api.openai.com/v1").proxy is None
