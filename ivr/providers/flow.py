"""The call-flow brain (IVR_BRAIN=flow): a scripted bot from a YAML flow, no model.

It answers in one step, so a reply is ready the moment the caller's turn ends. State (the current
node, slots, digits typed so far, misses) lives in the session; the history the engine passes is
not needed, since the flow itself says where the conversation is. See `ivr.flows` for the format.
"""

from __future__ import annotations

import itertools
import logging
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from ivr.flows import Action, Collect, Flow, FlowError, Node, Route, example_path, expected_phrases, load_flow, normalize
from ivr.flows.digits import spoken_digits
from ivr.providers.base import BrainOutput, CallContext, CallerInput, TextDelta, ToolCall, Turn

log = logging.getLogger("ivr.flow")

#: A transfer or tool must not chain into itself forever through `next`.
MAX_STEPS = 20


class FlowBrain:
    def __init__(self, flow: Flow | str | Path | None = None) -> None:
        self.flow = flow if isinstance(flow, Flow) else load_flow(flow)
        # Outbound calls may name another flow (the IvrFlow parameter): a file beside this one,
        # never a path, so a request cannot make the bot read any other file.
        self.directory = Path(flow).parent if isinstance(flow, (str, Path)) and flow else example_path().parent
        self._named: dict[str, Flow] = {}

    async def load(self) -> None:
        pass

    async def open(self, call: CallContext | None = None) -> "FlowSession":
        call = call or CallContext()
        name = call.parameters.get("IvrFlow", "")
        return FlowSession(self.named(name) if name else self.flow, call)

    def named(self, name: str) -> Flow:
        if name not in self._named:
            if "/" in name or "\\" in name or name.startswith("."):
                raise FlowError(f"flow name {name!r} is not a file name")
            path = next((self.directory / n for n in (name, name + ".yaml", name + ".yml") if (self.directory / n).is_file()), None)
            if path is None:
                raise FlowError(f"no flow named {name!r} in {self.directory}")
            self._named[name] = load_flow(path)
        return self._named[name]


class FlowSession:
    def __init__(self, flow: Flow, call: CallContext) -> None:
        self.flow = flow
        self.node: Node = flow.nodes[flow.start]
        self.slots: dict[str, str] = {}
        self.digits = ""  # keys typed towards the slot being collected
        self.misses = 0
        self.ended = False
        self._call = call
        self._ids = itertools.count(1)

    # --- the interface -------------------------------------------------------------------------

    async def greeting(self) -> AsyncIterator[BrainOutput]:
        out: list[BrainOutput] = []
        params = self._call.parameters
        outbound = self.flow.outbound if params.get("IvrDirection") == "outbound" else None
        answered_by = params.get("AnsweredBy", "")
        if params.get("IvrDirection") == "outbound" and (answered_by.startswith("machine") or answered_by == "fax"):
            # The engine waited for the verdict, which for a machine comes at the beep: leave the
            # message now and hang up; a machine gets no menu.
            self._say(out, outbound.voicemail if outbound is not None else "")
            self._finish(out, None, True, None)
        else:
            self._say(out, (outbound.greeting if outbound is not None else "") or self.flow.greeting)
            self._enter(out, (outbound.start if outbound is not None else None) or self.flow.start)
        for item in out:
            yield item

    async def respond(self, history: Sequence[Turn], caller: CallerInput) -> AsyncIterator[BrainOutput]:
        for item in self.step(caller):
            yield item

    async def aclose(self) -> None:
        pass

    def expected(self) -> tuple[str, ...]:
        """What the caller is likely to say at the node the call is at (see BrainSession)."""
        return expected_phrases(self.flow, self.node)

    # --- one step of the flow ------------------------------------------------------------------

    def step(self, caller: CallerInput) -> list[BrainOutput]:
        """The reply to one caller input (synchronous: there is nothing to wait for)."""
        out: list[BrainOutput] = []
        if self.ended:
            return out
        node = self.node
        if node.collect is not None:
            self._collect(out, node, node.collect, caller)
        else:
            route = self._route(node, caller)
            if route is not None:
                self.misses = 0
                self._act(out, route.action)
            elif caller.dtmf and not caller.text and set(caller.dtmf) <= {"#", "*"}:
                pass  # a stray # or * after a menu choice is no reason to complain
            else:
                self._miss(out, caller)
        return out

    def _route(self, node: Node, caller: CallerInput) -> Route | None:
        routes = node.routes + self.flow.anywhere
        if caller.dtmf:
            key = caller.dtmf[0]
            for route in routes:
                if route.dtmf == key:
                    return route
            return None
        if caller.text:
            words = f" {normalize(caller.text)} "
            best, best_len = None, 0
            for route in routes:
                for phrase in route.phrases:
                    # Whole words only ("no" must not match "know"); the longest phrase wins, so
                    # "check my order" beats "order".
                    if f" {phrase} " in words and len(phrase) > best_len:
                        best, best_len = route, len(phrase)
            return best
        return None

    def _collect(self, out: list[BrainOutput], node: Node, collect: Collect, caller: CallerInput) -> None:
        value: str | None = None
        if caller.dtmf:
            for key in caller.dtmf:
                if key == collect.terminator:
                    value, self.digits = self.digits, ""
                    break
                if key == "*" and collect.terminator != "*":
                    self.digits = ""  # start over
                elif key.isdigit():
                    self.digits += key
            if value is None and len(self.digits) >= collect.max:
                value, self.digits = self.digits, ""
            if value is None:
                return  # keep listening for keys: no reply
        elif caller.text:
            if collect.type == "text":
                value = caller.text.strip()
            else:
                value = spoken_digits(caller.text)
                if not collect.min <= len(value) <= collect.max:
                    # No usable number: the caller may be leaving ("talk to a person").
                    route = self._route(node, CallerInput(text=caller.text))
                    if route is not None:
                        self.misses = 0
                        self._act(out, route.action)
                        return
                    value = None
        if value is not None and collect.type == "digits" and not collect.min <= len(value) <= collect.max:
            value = None
        if not value:
            self._miss(out, caller)
            return
        self.misses = 0
        self.slots[collect.slot] = value
        self._say(out, collect.say)
        if collect.next:
            self._enter(out, collect.next)

    def _miss(self, out: list[BrainOutput], caller: CallerInput) -> None:
        self.misses += 1
        self.digits = ""
        fallback = self.flow.fallback
        if self.misses > fallback.retries:
            self.misses = 0
            self._act(out, fallback.then)
            return
        silent = not caller.text and not caller.dtmf
        self._say(out, fallback.silence if silent else fallback.say)
        self._say(out, self.node.prompt)

    def _act(self, out: list[BrainOutput], action: Action) -> None:
        self._say(out, action.say)
        if action.goto:
            self._enter(out, action.goto)
        else:
            self._finish(out, action.transfer, action.hangup, action.tool)

    def _enter(self, out: list[BrainOutput], node_id: str) -> None:
        for _ in range(MAX_STEPS):
            node = self.flow.nodes[node_id]
            self.node, self.digits, self.misses = node, "", 0
            self._say(out, node.say)
            if node.next is None:
                break
            node_id = node.next
        else:
            raise RuntimeError(f"flow loops through `next` without waiting (at node {node_id!r})")
        if self._finish(out, node.transfer, node.hangup, node.tool):
            return
        self._say(out, node.prompt)

    def _finish(self, out: list[BrainOutput], transfer, hangup: bool, tool) -> bool:
        if transfer is not None:
            arguments = {"to": self._fill(transfer.to)}
            if transfer.summary:
                arguments["summary"] = self._fill(transfer.summary)
            out.append(ToolCall("transfer", arguments, self._id()))
            self.ended = True
        elif hangup:
            out.append(ToolCall("hangup", {}, self._id()))
            self.ended = True
        elif tool is not None:
            arguments = {k: self._fill(v) if isinstance(v, str) else v for k, v in tool.arguments.items()}
            out.append(ToolCall(tool.name, arguments, self._id()))
        else:
            return False
        return True

    def _say(self, out: list[BrainOutput], text: str) -> None:
        if text:
            # Deltas are concatenated as streamed text: a whole reply ends with its own space.
            out.append(TextDelta(self._fill(text).strip() + " "))

    def _fill(self, text: str) -> str:
        values: dict[str, str] = dict(self.flow.variables)
        values.update(self._call.parameters)
        values.update(self.slots)
        return _Formatter().vformat(text, (), values)

    def _id(self) -> str:
        return f"flow-{next(self._ids)}"


class _Formatter(string.Formatter):
    def get_value(self, key, args, kwargs):
        if isinstance(key, str) and key not in kwargs:
            log.warning("flow reply uses {%s}, which has no value on this call", key)
            return ""
        return super().get_value(key, args, kwargs)

    def format_field(self, value, format_spec):
        if format_spec == "digits":
            # "4572" -> "4 5 7 2": read back one digit at a time, as people do with numbers.
            return " ".join(str(value))
        return super().format_field(value, format_spec)


def flow_from_mapping(data: Mapping) -> Flow:
    """Build a flow from an already-parsed mapping (tests, generated flows)."""
    import yaml

    from ivr.flows import parse_flow

    return parse_flow(yaml.safe_dump(dict(data)), source="<mapping>")
