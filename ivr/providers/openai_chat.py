"""The OpenAI brain: streaming chat completions with tools (over ivr.providers.openai_http).

The system prompt, model options, the application's own tools and the transfer targets come from
the call-flow file (`llm`, `system_prompt`, `tools`, `transfers`; see ivr.flows), so one file
describes a bot whichever brain answers. `OPENAI_BASE_URL` points the client at any
OpenAI-compatible server (a local model, a proxy).

A caller is waiting, so there are no hidden retries or long timeouts: the first token must come
within `first_token_s` (default 3 s); a timeout, a 429 or a 5xx gets one retry, a server that
cannot be reached none (a pooled connection the server closed just as the request went is not
that: the client sends it again at once, on a new one). Then the provider is taken for down
(`health`, ivr.providers.health: one probe per process lists the models until it answers) and
the caller hears a short apology and the call flow's answer (`FallbackBrain`), or, with no flow
to stand in, the fallback line.
Text deltas are yielded as they stream (the engine cuts them into clauses for the TTS); tool-call
deltas are assembled by `ToolCallAssembler` and yielded once the stream ends.

Tools offered to the model: `transfer` (to one of the flow's named `transfers`: the model never
makes up a number), `hangup`, `send_dtmf`, and the flow's `tools`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping, Sequence

from ivr.config import ConfigError, Settings
from ivr.providers import cloud
from ivr.providers.base import BrainOutput, CallContext, CallerInput, TextDelta, ToolCall, Turn
from ivr.providers.health import Health
from ivr.providers.openai_http import ApiConnectionError, ApiError, OpenAIHttp

log = logging.getLogger("ivr.brain.openai")

PROVIDER = "openai"
#: After the first token, a stream that goes quiet this long is abandoned (the words so far stand).
STALL_S = 8.0
DEFAULT_PROMPT = (
    "You are a friendly voice assistant answering a telephone call. Your words are spoken aloud: "
    "keep answers short (one to three sentences), no lists, no markdown, no emoji. Spell out "
    "numbers as they should be said."
)
DEFAULT_FALLBACK = "Sorry, I'm having trouble right now. Could you say that again?"
DEFAULT_APOLOGY = "I'm sorry, I'm having some trouble on my side right now."
LLM_KEYS = ("model", "temperature", "max_tokens", "first_token_timeout", "fallback", "apology", "greeting")
PHONE_TARGET = re.compile(r"\+?[0-9]{3,15}|sips?:\S+")


@dataclass(frozen=True)
class LlmConfig:
    """The flow file's `llm`, `system_prompt`, `tools` and `transfers`, checked."""

    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    first_token_s: float | None = None
    fallback: str = DEFAULT_FALLBACK
    #: Said before the call flow takes over from a model that cannot answer.
    apology: str = DEFAULT_APOLOGY
    greeting: str = ""
    system_prompt: str = DEFAULT_PROMPT
    tools: tuple[dict, ...] = ()
    transfers: Mapping[str, str] = field(default_factory=dict)


def llm_config(extra: Mapping[str, Any], greeting: str = "", variables: Mapping[str, str] | None = None) -> LlmConfig:
    """Read the flow's LLM sections; errors name the key (`flow: llm.temperature ...`)."""
    llm = extra.get("llm") or {}
    if not isinstance(llm, Mapping):
        raise ConfigError("flow: 'llm' must be a mapping")
    unknown = set(llm) - set(LLM_KEYS)
    if unknown:
        raise ConfigError(f"flow: unknown key(s) {sorted(unknown)} in 'llm' (known: {', '.join(LLM_KEYS)})")
    for key in ("temperature", "first_token_timeout"):
        value = llm.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"flow: llm.{key} must be a non-negative number, not {value!r}")
    max_tokens = llm.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConfigError(f"flow: llm.max_tokens must be a whole number of at least 1, not {max_tokens!r}")
    prompt = extra.get("system_prompt") or DEFAULT_PROMPT
    if not isinstance(prompt, str):
        raise ConfigError("flow: system_prompt must be text")
    transfers = extra.get("transfers") or {}
    if not isinstance(transfers, Mapping):
        raise ConfigError("flow: 'transfers' must map names to numbers or sip: URIs")
    resolved: dict[str, str] = {}
    for name, target in transfers.items():
        target = _fill(str(target), variables or {})
        if not PHONE_TARGET.fullmatch(target):
            raise ConfigError(f"flow: transfers.{name}: {target!r} is not a phone number (+15551234567) or a sip: URI")
        resolved[str(name)] = target
    tools = []
    for i, tool in enumerate(extra.get("tools") or []):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise ConfigError(f"flow: tools[{i}] needs a name")
        unknown = set(tool) - {"name", "description", "parameters"}
        if unknown:
            raise ConfigError(f"flow: tools[{i}]: unknown key(s) {sorted(unknown)} (known: name, description, parameters)")
        if tool["name"] in ("transfer", "hangup", "send_dtmf"):
            raise ConfigError(f"flow: tools[{i}]: {tool['name']!r} is built in")
        params = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping) or params.get("type") != "object":
            raise ConfigError(f"flow: tools[{i}].parameters must be a JSON schema with type: object")
        tools.append({"type": "function", "function": {"name": tool["name"], "description": str(tool.get("description", "")),
                                                       "parameters": dict(params)}})
    return LlmConfig(
        model=str(llm.get("model") or ""),
        temperature=llm.get("temperature"),
        max_tokens=max_tokens,
        first_token_s=llm.get("first_token_timeout"),
        fallback=str(llm.get("fallback") or DEFAULT_FALLBACK),
        apology=str(llm.get("apology") or DEFAULT_APOLOGY),
        greeting=_fill(str(llm.get("greeting") or greeting or ""), variables or {}),
        system_prompt=prompt.strip(),
        tools=tuple(tools),
        transfers=resolved,
    )


def _fill(text: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: str(variables.get(m.group(1), m.group(0))), text)


# --- pure: messages, tools, tool-call assembly -----------------------------------------------------


def builtin_tools(transfers: Mapping[str, str]) -> list[dict]:
    tools = [
        {"type": "function", "function": {
            "name": "hangup", "description": "End the call, after saying goodbye.",
            "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {
            "name": "send_dtmf", "description": "Press telephone keys (for an automated menu on the line).",
            "parameters": {"type": "object", "properties": {"digits": {"type": "string", "pattern": "^[0-9*#A-D]+$"}},
                           "required": ["digits"]}}},
    ]
    if transfers:
        tools.insert(0, {"type": "function", "function": {
            "name": "transfer", "description": "Put the caller through to a person. Say so first.",
            "parameters": {"type": "object", "properties": {
                "target": {"type": "string", "enum": sorted(transfers)},
                "summary": {"type": "string", "description": "One sentence for the person who answers."}},
                "required": ["target"]}}})
    return tools


def build_messages(config: LlmConfig, history: Sequence[Turn], caller: CallerInput, call: CallContext) -> list[dict]:
    system = config.system_prompt
    if config.transfers:
        system += "\nYou can transfer the caller to: " + ", ".join(sorted(config.transfers)) + "."
    if call.parameters.get("From"):
        system += f"\nThe caller's number is {call.parameters['From']}."
    messages: list[dict] = [{"role": "system", "content": system}]
    for turn in history:
        if turn.role == "caller":
            messages.append({"role": "user", "content": turn.text})
        else:
            # Only what the caller heard is in a bot turn; say where they cut it short.
            text = turn.text + (" [the caller interrupted here]" if turn.interrupted else "")
            messages.append({"role": "assistant", "content": text})
    if caller.text:
        messages.append({"role": "user", "content": caller.text})
    elif caller.dtmf:
        messages.append({"role": "user", "content": f"[the caller pressed the keys {caller.dtmf}]"})
    else:
        messages.append({"role": "user", "content": "[the caller has said nothing for a while]"})
    return messages


class ToolCallAssembler:
    """Tool calls arrive in pieces by `index`: id and name once, arguments as string fragments."""

    def __init__(self) -> None:
        self._calls: dict[int, dict] = {}

    def add(self, deltas: Sequence[Mapping[str, Any]]) -> None:
        for d in deltas:
            call = self._calls.setdefault(d.get("index", 0), {"id": "", "name": "", "arguments": ""})
            if d.get("id"):
                call["id"] = d["id"]
            fn = d.get("function")
            if fn:
                if fn.get("name"):
                    call["name"] += fn["name"]
                if fn.get("arguments"):
                    call["arguments"] += fn["arguments"]

    def calls(self, transfers: Mapping[str, str]) -> list[ToolCall]:
        out = []
        for index in sorted(self._calls):
            c = self._calls[index]
            try:
                args = json.loads(c["arguments"] or "{}")
                if not isinstance(args, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                log.warning("tool call %s with unreadable arguments (%s); ignored", c["name"], exc)
                continue
            if c["name"] == "transfer":
                target = transfers.get(str(args.get("target", "")))
                if target is None:
                    log.warning("transfer to unknown target %r; ignored", args.get("target"))
                    continue
                args = {"to": target, "summary": str(args.get("summary", ""))}
            out.append(ToolCall(c["name"], args, c["id"] or f"call_{index}"))
        return out


# --- the engine ------------------------------------------------------------------------------------


class _Retryable(Exception):
    def __init__(self, message: str, reached: bool = True) -> None:
        super().__init__(message)
        #: False: the server could not be reached at all (a second try at once would not either).
        self.reached = reached


class OpenAIBrain:
    def __init__(self, api_key: str, base_url: str, model: str, config: LlmConfig, first_token_s: float = 3.0,
                 max_requests: int = 100) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OPENAI_BASE_URL: {base_url!r} must start with https:// (or http:// for a local server)")
        self.config = config
        self.model = config.model or model
        self.first_token_s = config.first_token_s or first_token_s
        if self.first_token_s <= 0:
            raise ConfigError("IVR_OPENAI_FIRST_TOKEN_S: must be more than 0")
        self.client = OpenAIHttp(api_key, base_url, connect_s=min(3.0, self.first_token_s))
        self.limit = cloud.Limit(PROVIDER, max_requests, "requests", "IVR_OPENAI_MAX_REQUESTS")
        self.tools = builtin_tools(config.transfers) + list(config.tools)
        self.health = Health(PROVIDER, "OpenAI", self.probe)

    async def load(self) -> None:
        """List the models once: a bad key fails at start-up, naming the variable."""
        try:
            async with asyncio.timeout(10):
                await self.client.models()
        except ApiError as exc:
            if exc.status in (401, 403):
                raise ConfigError(f"OpenAI {'rejected' if exc.status == 401 else 'refused'} the key in "
                                  f"OPENAI_API_KEY (HTTP {exc.status}): check OPENAI_API_KEY") from None
            if exc.status >= 500:
                self.health.failed(f"{self.client.base_url} at start-up: {exc}")
            else:
                log.warning("could not list models at %s at start-up (%s); calls will try anyway", self.client.base_url, exc)
        except Exception as exc:
            self.health.failed(f"{self.client.base_url} at start-up: {type(exc).__name__}: {exc}")

    async def probe(self) -> None:
        """Does the server answer? The model list (a compatible server without one answers too)."""
        try:
            await self.client.models()
        except ApiError as exc:
            if exc.status in (401, 403, 429) or exc.status >= 500:
                raise

    async def open(self, call: CallContext) -> "OpenAISession":
        return OpenAISession(self, call)


class OpenAISession:
    #: Each reply is built from the history passed in, so one started early can be dropped.
    speculative = True

    def __init__(self, brain: OpenAIBrain, call: CallContext) -> None:
        self.brain = brain
        self.call = call

    async def aclose(self) -> None:
        pass  # nothing per call: requests are made (and closed) per turn

    async def greeting(self) -> AsyncIterator[BrainOutput]:
        # A fixed greeting: rendered once at start-up, so every call starts without waiting.
        yield TextDelta(self.brain.config.greeting or "Hello! How can I help you?")

    async def respond(self, history: Sequence[Turn], caller: CallerInput) -> AsyncIterator[BrainOutput]:
        try:
            async for out in self.answer(history, caller):
                yield out
        except cloud.Unreachable:
            cloud.fallback(PROVIDER)
            yield TextDelta(self.brain.config.fallback)

    async def answer(self, history: Sequence[Turn], caller: CallerInput) -> AsyncIterator[BrainOutput]:
        """The reply, or `cloud.Unreachable` if the model gave no word of it (for a fallback)."""
        messages = build_messages(self.brain.config, history, caller, self.call)
        for attempt in (1, 2):
            yielded = False
            try:
                async for out in self._stream(messages):
                    yielded = True
                    yield out
                return
            except _Retryable as exc:
                if yielded:
                    log.warning("[%s] OpenAI stream broke after the reply began (%s); keeping what was said", self.call.call_sid, exc)
                    return
                last = attempt == 2 or not exc.reached
                cloud.error(PROVIDER, "failed" if last else "retry")
                if last:
                    self.brain.health.failed(str(exc))
                    raise cloud.Unreachable(f"OpenAI {exc}") from None
                log.warning("[%s] OpenAI %s (attempt %d of 2)", self.call.call_sid, exc, attempt)

    async def _stream(self, messages: list[dict]) -> AsyncIterator[BrainOutput]:
        brain = self.brain
        body: dict[str, Any] = {"model": brain.model, "messages": messages, "tools": brain.tools, "stream": True}
        if brain.config.temperature is not None:
            body["temperature"] = brain.config.temperature
        if brain.config.max_tokens is not None:
            body["max_completion_tokens"] = brain.config.max_tokens
        tools = ToolCallAssembler()
        await brain.limit.acquire()
        t0 = time.monotonic()
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(brain.first_token_s):
                        chunks = await stack.enter_async_context(brain.client.chat_stream(body))
                        first = await _first_meaningful(chunks)
                except TimeoutError:
                    raise _Retryable(f"sent no token within {brain.first_token_s:.1f} s") from None
                except ApiError as exc:
                    if exc.status == 401:
                        cloud.error(PROVIDER, "auth")
                        log.error("[%s] OpenAI rejected the key in OPENAI_API_KEY (HTTP 401): check OPENAI_API_KEY",
                                  self.call.call_sid)
                        raise _Retryable("rejected the key") from None
                    raise _Retryable("rate limit (HTTP 429)" if exc.status == 429 else str(exc)) from None
                except ApiConnectionError as exc:
                    raise _Retryable(f"cannot be reached ({exc})", reached=False) from None
                brain.health.succeeded()
                if first is None:
                    return
                cloud.observe_first(PROVIDER, t0)
                chunk = first
                while chunk is not None:
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta")
                        if not delta:
                            continue
                        if delta.get("content"):
                            yield TextDelta(delta["content"])
                        if delta.get("tool_calls"):
                            tools.add(delta["tool_calls"])
                    try:
                        async with asyncio.timeout(STALL_S):
                            chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        chunk = None
                    except (TimeoutError, ApiError, ApiConnectionError) as exc:
                        raise _Retryable(f"stream stopped: {type(exc).__name__}") from None
            for call in tools.calls(brain.config.transfers):
                yield call
        finally:
            brain.limit.release()


async def _first_meaningful(chunks: AsyncIterator[dict]) -> dict | None:
    """The first chunk with text or a tool call (the role-only opening chunk does not count)."""
    async for chunk in chunks:
        for choice in chunk.get("choices") or ():
            d = choice.get("delta")
            if d and (d.get("content") or d.get("tool_calls")):
                return chunk
    return None


def from_settings(settings: Settings) -> OpenAIBrain:
    from ivr.flows import FlowError, load_flow

    key = cloud.require_key(settings.openai_api_key, "OpenAI", "OPENAI_API_KEY", "IVR_BRAIN=openai")
    try:
        flow = load_flow(settings.flow or None)
    except FlowError as exc:
        raise ConfigError(f"IVR_FLOW: {exc}") from None
    config = llm_config(flow.extra, flow.greeting, flow.variables)
    return OpenAIBrain(key, settings.openai_base_url, settings.openai_model, config,
                       settings.openai_first_token_s, settings.openai_max_requests)
