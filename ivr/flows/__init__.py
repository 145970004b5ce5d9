"""Call flows: a YAML file that describes a bot without code (see `example.yaml`).

`load_flow(path)` reads and checks a flow, failing with a message that names the offending key
(`nodes.main.routes[2]: unknown key 'gotto'`). `example_path()` is the flow shipped with the
package, the default bot.

Format
------
Top level: `greeting` (said first), `start` (the first node), `nodes` (id -> node), optional
`name`, `variables` (default values for `{placeholders}`), `fallback` and `anywhere`.

A node, when entered, says `say`, then runs at most one action (`transfer`, `hangup`, `tool`) or
moves on to `next`; otherwise it waits for the caller and says `prompt`. A waiting node either
`collect`s a slot or offers `routes`. A route matches the caller's words (`match`: phrases,
matched as whole words, the longest match wins) or a key (`dtmf`), and then does what a node does
(`say`, an action, or `goto` a node; without `goto` it stays and waits again). `anywhere` routes
apply in every node after the node's own routes (talk to a person, goodbye...). What a waiting
node expects (its phrases, the digits of a digits slot, the `anywhere` phrases:
`expected_phrases`) is also what the embedded recogniser listens for while the call is there
(IVR_STT_BIAS).

`collect`: `slot` (name), `type` `digits` (keys ended by `terminator`, default `#`, or spoken
digits; `min`/`max` digits) or `text` (the caller's words); then `next` or `goto` a node.

`fallback`: `say` (when nothing matched), `silence` (when the caller said nothing), `retries`
(consecutive misses allowed in a node) and `then` (what to do after that: a route body).

Placeholders: `{name}` is a slot, a call parameter (`{From}`) or a variable; `{name:digits}`
spells a number digit by digit, as a person reads an order number back.

`outbound` (calls the bot places, ivr.outbound): `greeting` (said instead of the top-level one
when a person answers), optional `start` (the first node then; default: `start`) and `voicemail`
(said once an answering machine's greeting has ended, at the beep; then the bot hangs up; without
it the bot hangs up on machines without a word). The call's parameters (`{name}`) fill both.
Which path runs is Twilio's answering-machine verdict, the `AnsweredBy` call parameter.

Keys reserved for the conversation engine (`barge_in`, `silence`, `voice`, `llm`,
`system_prompt`, `tools`, `transfers`) are accepted and left to it; any other unknown key is an
error, so a misspelling never passes silently.

For the OpenAI brain (`IVR_BRAIN=openai`, ivr.providers.openai_chat) the same file gives:

```yaml
greeting: "Thanks for calling {shop}."   # said first (fixed, so it is rendered once at start-up)
system_prompt: |
  You answer the phone for Sunrise Bakery. Keep answers to one or two sentences.
llm:
  model: gpt-4o-mini          # overrides IVR_OPENAI_MODEL
  temperature: 0.3
  max_tokens: 200
  first_token_timeout: 3      # seconds; then one retry; then `apology` and the flow's nodes answer
  apology: "I'm sorry, I'm having some trouble on my side right now."
  fallback: "Sorry, I'm having trouble right now. Could you say that again?"  # if no node answers
transfers:                    # the model's `transfer` tool takes one of these names
  staff: "{staff_line}"       # a number or a sip: URI; {variables} are filled in
tools:                        # the application's own tools (JSON schema parameters)
  - name: check_order
    description: Look up an order by its number.
    parameters: {type: object, properties: {number: {type: string}}, required: [number]}
```

`hangup` and `send_dtmf` are always offered; `transfer` when `transfers` has targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from ivr.errors import UserError
from ivr.flows.digits import DIGIT_WORDS

RESERVED_TOP_LEVEL = ("barge_in", "silence", "voice", "llm", "system_prompt", "tools", "transfers")
TOP_LEVEL = ("name", "greeting", "start", "nodes", "variables", "fallback", "anywhere", "outbound")
OUTBOUND_KEYS = ("greeting", "start", "voicemail")
ACTION_KEYS = ("say", "goto", "transfer", "hangup", "tool")
NODE_KEYS = ("say", "prompt", "next", "transfer", "hangup", "tool", "routes", "collect")
ROUTE_KEYS = ("match", "dtmf") + ACTION_KEYS
COLLECT_KEYS = ("slot", "type", "min", "max", "terminator", "next", "goto", "say")
FALLBACK_KEYS = ("say", "silence", "retries", "then")
DTMF_KEYS = set("0123456789*#ABCD")
PHONE_TARGET = re.compile(r"\+?[0-9]{3,15}|sips?:\S+|\{[A-Za-z_][A-Za-z0-9_]*\}")


#: How to mend a flow file that was read but is wrong.
FIX_FLOW = ("correct the file: its format is described at the top of ivr/flows/__init__.py, and "
            "ivr/flows/example.yaml is a working flow")


class FlowError(UserError, ValueError):
    def __init__(self, message: str, hint: str = FIX_FLOW) -> None:
        super().__init__(message, hint)


@dataclass(frozen=True, slots=True)
class Transfer:
    to: str
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Action:
    """What a route (or a fallback's `then`) does once chosen."""

    say: str = ""
    goto: str | None = None
    transfer: Transfer | None = None
    hangup: bool = False
    tool: Tool | None = None


@dataclass(frozen=True, slots=True)
class Route:
    phrases: tuple[str, ...]
    dtmf: str
    action: Action


@dataclass(frozen=True, slots=True)
class Collect:
    slot: str
    type: str = "digits"
    min: int = 1
    max: int = 16
    terminator: str = "#"
    next: str | None = None
    say: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    say: str = ""
    prompt: str = ""
    next: str | None = None
    transfer: Transfer | None = None
    hangup: bool = False
    tool: Tool | None = None
    routes: tuple[Route, ...] = ()
    collect: Collect | None = None


@dataclass(frozen=True, slots=True)
class Fallback:
    say: str = "Sorry, I didn't catch that."
    silence: str = "Are you still there?"
    retries: int = 2
    then: Action = Action(say="Sorry, I can't help with that. Goodbye.", hangup=True)


@dataclass(frozen=True, slots=True)
class Outbound:
    greeting: str = ""
    start: str | None = None
    voicemail: str = ""


@dataclass(frozen=True, slots=True)
class Flow:
    greeting: str
    start: str
    nodes: Mapping[str, Node]
    name: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)
    fallback: Fallback = Fallback()
    anywhere: tuple[Route, ...] = ()
    #: Sections for the conversation engine, untouched (e.g. `barge_in`, `silence`).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: How calls the bot places begin (None: like inbound calls, with no voicemail message).
    outbound: Outbound | None = None


def example_path() -> Path:
    return Path(str(resources.files("ivr.flows") / "example.yaml"))


def load_flow(path: str | Path | None = None) -> Flow:
    path = Path(path) if path else example_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise FlowError(f"cannot read flow {path}: {error.strerror or error}", hint="check the path") from None
    return parse_flow(text, source=str(path))


def parse_flow(text: str, source: str = "<flow>") -> Flow:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise FlowError(f"{source}: not valid YAML: {_yaml_problem(error)}") from None
    try:
        return _flow(data)
    except FlowError as error:
        raise FlowError(f"{source}: {error}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's several-line message with a caret drawing, as one line."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return " ".join(str(error).split())
    mark = error.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if error.context:
        text += f" ({error.context}"
        if error.context_mark is not None:
            text += f" at line {error.context_mark.line + 1}, column {error.context_mark.column + 1}"
        text += ")"
    return text


# --- checking and building ---------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FlowError(f"{where}: expected a mapping of keys, got {type(value).__name__}")
    return value


def _keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise FlowError(f"{where}: unknown key {key!r} (expected one of: {', '.join(allowed)})")


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise FlowError(f"{where}: expected text")
    return value.strip()


def _transfer(value: Any, where: str) -> Transfer:
    if isinstance(value, (str, int)):
        value = {"to": str(value)}
    data = _mapping(value, where)
    _keys(data, ("to", "summary"), where)
    to = _text(data.get("to"), where + ".to")
    if not PHONE_TARGET.fullmatch(to):
        raise FlowError(f"{where}.to: {to!r} is not a phone number (+15551234567), a sip: URI or a {{variable}}")
    return Transfer(to=to, summary=_text(data.get("summary"), where + ".summary"))


def _tool(value: Any, where: str) -> Tool:
    if isinstance(value, str):
        value = {"name": value}
    data = _mapping(value, where)
    _keys(data, ("name", "arguments"), where)
    name = _text(data.get("name"), where + ".name")
    if not name:
        raise FlowError(f"{where}.name: a tool needs a name")
    return Tool(name=name, arguments=dict(_mapping(data.get("arguments") or {}, where + ".arguments")))


def _action(data: Mapping[str, Any], where: str) -> Action:
    hangup = data.get("hangup", False)
    if not isinstance(hangup, bool):
        raise FlowError(f"{where}.hangup: expected true or false")
    action = Action(
        say=_text(data.get("say"), where + ".say"),
        goto=_text(data.get("goto"), where + ".goto") or None,
        transfer=_transfer(data["transfer"], where + ".transfer") if data.get("transfer") is not None else None,
        hangup=hangup,
        tool=_tool(data["tool"], where + ".tool") if data.get("tool") is not None else None,
    )
    ends = [k for k in ("goto", "transfer", "hangup", "tool") if getattr(action, k)]
    if len(ends) > 1:
        raise FlowError(f"{where}: choose one of goto, transfer, hangup, tool (got {', '.join(ends)})")
    return action


def _routes(value: Any, where: str) -> tuple[Route, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FlowError(f"{where}: expected a list of routes")
    routes = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        data = _mapping(item, w)
        _keys(data, ROUTE_KEYS, w)
        match = data.get("match") or []
        if isinstance(match, str):
            match = [match]
        if not isinstance(match, list):
            raise FlowError(f"{w}.match: expected a phrase or a list of phrases")
        phrases = tuple(p for p in (normalize(_text(m, w + ".match")) for m in match) if p)
        dtmf = _text(data.get("dtmf"), w + ".dtmf")
        if dtmf and (len(dtmf) != 1 or dtmf not in DTMF_KEYS):
            raise FlowError(f"{w}.dtmf: {dtmf!r} is not one key (0-9, *, #)")
        if not phrases and not dtmf:
            raise FlowError(f"{w}: a route needs `match` phrases or a `dtmf` key")
        routes.append(Route(phrases, dtmf, _action(data, w)))
    return tuple(routes)


def _collect(value: Any, where: str) -> Collect:
    data = _mapping(value, where)
    _keys(data, COLLECT_KEYS, where)
    slot = _text(data.get("slot"), where + ".slot")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", slot or ""):
        raise FlowError(f"{where}.slot: needs a name made of letters, digits and _")
    kind = _text(data.get("type", "digits"), where + ".type")
    if kind not in ("digits", "text"):
        raise FlowError(f"{where}.type: {kind!r} is not digits or text")
    low, high = data.get("min", 1), data.get("max", 16)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise FlowError(f"{where}: min and max must be whole numbers with 1 <= min <= max")
    terminator = _text(data.get("terminator", "#"), where + ".terminator")
    if terminator not in ("#", "*"):
        raise FlowError(f"{where}.terminator: must be # or *")
    if data.get("next") and data.get("goto"):
        raise FlowError(f"{where}: give next or goto, not both")
    nxt = _text(data.get("next") or data.get("goto"), where + ".next") or None
    return Collect(slot, kind, low, high, terminator, nxt, _text(data.get("say"), where + ".say"))


def _node(node_id: str, value: Any) -> Node:
    where = f"nodes.{node_id}"
    data = _mapping(value, where)
    _keys(data, NODE_KEYS, where)
    action = _action({k: v for k, v in data.items() if k in ACTION_KEYS}, where)
    node = Node(
        id=node_id,
        say=action.say,
        prompt=_text(data.get("prompt"), where + ".prompt"),
        next=_text(data.get("next"), where + ".next") or None,
        transfer=action.transfer,
        hangup=action.hangup,
        tool=action.tool,
        routes=_routes(data.get("routes"), where + ".routes"),
        collect=_collect(data["collect"], where + ".collect") if data.get("collect") is not None else None,
    )
    ends = [k for k in ("next", "transfer", "hangup", "tool", "collect") if getattr(node, k)]
    if node.routes:
        ends.append("routes")
    if len(ends) > 1:
        raise FlowError(f"{where}: a node does one of next, transfer, hangup, tool, collect, routes (got {', '.join(ends)})")
    return node


def _flow(data: Any) -> Flow:
    data = _mapping(data, "flow")
    for key in data:
        if key not in TOP_LEVEL and key not in RESERVED_TOP_LEVEL:
            raise FlowError(
                f"unknown top-level key {key!r} (flow keys: {', '.join(TOP_LEVEL)}; "
                f"reserved for the conversation engine: {', '.join(RESERVED_TOP_LEVEL)})"
            )
    nodes_data = _mapping(data.get("nodes"), "nodes")
    if not nodes_data:
        raise FlowError("nodes: a flow needs at least one node")
    nodes = {str(k): _node(str(k), v) for k, v in nodes_data.items()}
    start = _text(data.get("start"), "start") or next(iter(nodes))
    fb_data = _mapping(data.get("fallback") or {}, "fallback")
    _keys(fb_data, FALLBACK_KEYS, "fallback")
    default = Fallback()
    retries = fb_data.get("retries", default.retries)
    if not isinstance(retries, int) or retries < 0:
        raise FlowError("fallback.retries: expected a whole number, 0 or more")
    then = default.then
    if fb_data.get("then") is not None:
        then_data = _mapping(fb_data["then"], "fallback.then")
        _keys(then_data, ACTION_KEYS, "fallback.then")
        then = _action(then_data, "fallback.then")
    fallback = Fallback(
        say=_text(fb_data.get("say"), "fallback.say") or default.say,
        silence=_text(fb_data.get("silence"), "fallback.silence") or default.silence,
        retries=retries,
        then=then,
    )
    variables = {str(k): _text(v, f"variables.{k}") for k, v in _mapping(data.get("variables") or {}, "variables").items()}
    flow = Flow(
        greeting=_text(data.get("greeting"), "greeting"),
        start=start,
        nodes=nodes,
        name=_text(data.get("name"), "name"),
        variables=variables,
        fallback=fallback,
        anywhere=_routes(data.get("anywhere"), "anywhere"),
        extra={k: v for k, v in data.items() if k in RESERVED_TOP_LEVEL},
        outbound=_outbound(data["outbound"]) if data.get("outbound") is not None else None,
    )
    _check_targets(flow)
    return flow


def _outbound(value: Any) -> Outbound:
    data = _mapping(value, "outbound")
    _keys(data, OUTBOUND_KEYS, "outbound")
    return Outbound(
        greeting=_text(data.get("greeting"), "outbound.greeting"),
        start=_text(data.get("start"), "outbound.start") or None,
        voicemail=_text(data.get("voicemail"), "outbound.voicemail"),
    )


def _check_targets(flow: Flow) -> None:
    def check(target: str | None, where: str) -> None:
        if target is not None and target not in flow.nodes:
            raise FlowError(f"{where}: no node named {target!r} (nodes: {', '.join(flow.nodes)})")

    check(flow.start, "start")
    if flow.outbound is not None:
        check(flow.outbound.start, "outbound.start")
    check(flow.fallback.then.goto, "fallback.then.goto")
    for i, route in enumerate(flow.anywhere):
        check(route.action.goto, f"anywhere[{i}].goto")
    for node in flow.nodes.values():
        check(node.next, f"nodes.{node.id}.next")
        if node.collect:
            check(node.collect.next, f"nodes.{node.id}.collect.next")
        for i, route in enumerate(node.routes):
            check(route.action.goto, f"nodes.{node.id}.routes[{i}].goto")


def normalize(text: str) -> str:
    """Lower case, words only: how caller speech and match phrases are compared."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def prompt_words(flow: Flow) -> str:
    """What callers of this flow are likely to say, as text a recogniser may be primed with
    (Whisper's initial prompt): the bot's name, every route's phrases and the slots' names."""
    seen: dict[str, None] = {}
    routes = [r for node in flow.nodes.values() for r in node.routes] + list(flow.anywhere)
    for route in routes:
        for phrase in route.phrases:
            seen.setdefault(phrase, None)
    for node in flow.nodes.values():
        if node.collect is not None:
            seen.setdefault(node.collect.slot.replace("_", " "), None)
    words = ", ".join(seen)
    return f"{flow.name}. {words}." if flow.name else f"{words}."




def expected_phrases(flow: Flow, node: Node) -> tuple[str, ...]:
    """What a caller at `node` is likely to say next, for a recogniser to listen for: the node's
    route phrases, the digits for a digits slot, then the routes that apply everywhere."""
    seen: dict[str, None] = {}
    for route in node.routes:
        seen.update(dict.fromkeys(route.phrases))
    if node.collect is not None and node.collect.type == "digits":
        seen.update(dict.fromkeys(DIGIT_WORDS))
    for route in flow.anywhere:
        seen.update(dict.fromkeys(route.phrases))
    return tuple(seen)
