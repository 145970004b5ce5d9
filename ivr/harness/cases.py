"""Cases for `ivr test`: call scripts (or recorded calls) with expectations, and the pure checks.

A case is a YAML file. Either a call script (`steps:`, as `ivr replay` runs it) whose steps may
carry `expect:` (about the bot's reply to that step), or a recorded call (`call: FILE`, a capture
or a recording) whose `expect: {turns: [...]}` holds one entry per caller turn. Both may have a
call-wide `expect:` (greeting, transfer, hangup, tool, barge_in). Format: README.md, "ivr test".

Nothing here does I/O but reading the case file: `parse_case` reads one, `build_outcome` turns a
replayed call (its report, the caller's turn spans and the bot's engine events) into what the
caller heard turn by turn, `check` compares that with the case and returns failures, each with
what was expected and what was heard, and `baseline` writes today's outcome as expectations.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivr.audio import FRAME_MS
from ivr.harness.sources import ACTIONS, SCRIPT_SUFFIXES

#: Keys a step's `expect:` may hold, and the call's.
STEP_KEYS = ("says", "not_says", "within_ms", "heard", "caller")
CALL_KEYS = ("greeting", "turns", "transfer", "hangup", "tool", "barge_in")
#: Error kinds of a replayed call that broke it (the rest are the bot's protocol errors, or waits).
_CALL_BROKEN = {"connect_failed", "connection_closed", "harness_error"}


class CaseError(ValueError):
    """A case file that cannot be run as written (a usage error: exit status 2)."""


# --- what a case expects ------------------------------------------------------------------------


@dataclass(frozen=True)
class Phrase:
    """One `says`/`not_says` item: words (case-insensitive), a /regex/, or a meaning to judge."""

    kind: str  # "text" | "regex" | "meaning"
    value: str

    def describe(self) -> str:
        if self.kind == "regex":
            return f"/{self.value}/"
        if self.kind == "meaning":
            return f"meaning: {quoted(self.value)}"
        return quoted(self.value)


@dataclass
class ReplyExpect:
    """What the bot's reply to one caller turn (or its greeting) must be."""

    says: list[Phrase] = field(default_factory=list)
    not_says: list[Phrase] = field(default_factory=list)
    within_ms: float | None = None
    #: The whole reply, word for word (case and punctuation aside): a recorded baseline.
    heard: str | None = None
    #: What the caller said, for people reading the case (never checked).
    caller: str | None = None


@dataclass(frozen=True)
class ToolExpect:
    name: str
    arguments: dict


@dataclass
class CallExpect:
    greeting: ReplyExpect | None = None
    #: Per caller turn, for recorded calls (None: not given).
    turns: list[ReplyExpect | None] | None = None
    transfer: str | None = None
    #: True: the bot must hang up; False: it must not.
    hangup: bool | None = None
    tools: list[ToolExpect] = field(default_factory=list)
    #: Every barge-in must be cleared within this (and at least one must happen).
    clear_within_ms: float | None = None


@dataclass
class Case:
    path: Path
    name: str
    #: The file the harness replays: the case itself for a script, else its `call:`.
    call: Path
    kind: str  # "script" | "call"
    #: For scripts: (step number from 1, a short label, its expectation or None) of each step the
    #: caller acts in (say, audio, dtmf), in order; the harness finds one caller turn per step.
    steps: list[tuple[int, str, ReplyExpect | None]]
    expect: CallExpect
    #: A recorded case (`recorded:` present) is rewritten by `ivr test --update`.
    recorded: dict | None
    doc: dict

    @property
    def uses_meaning(self) -> bool:
        replies = [e for _, _, e in self.steps if e] + [self.expect.greeting] + list(self.expect.turns or [])
        return any(p.kind == "meaning" for e in replies if e for p in e.says + e.not_says)


def is_case_file(path: Path) -> bool:
    return path.suffix.lower() in SCRIPT_SUFFIXES


def find_cases(paths: list[Path]) -> list[Path]:
    """The case files in `paths` (folders searched recursively, in name order)."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and is_case_file(f))
        elif p.is_file():
            found.append(p)
        else:
            raise CaseError(f"{p}: no such file or folder")
    return found


def parse_case(path: Path) -> Case:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CaseError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise CaseError(f"{path}: a case is a mapping with `steps:` (a call script) or `call:` (a recorded call)")
    name = str(doc.get("name") or path.stem)
    expect = _call_expect(doc.get("expect"), f"{path}: expect")
    if "call" in doc:
        if "steps" in doc:
            raise CaseError(f"{path}: give `steps:` or `call:`, not both")
        call = path.parent / str(doc["call"])
        if not call.is_file():
            raise CaseError(f"{path}: call: {call} is not a file")
        return Case(path, name, call, "call", [], expect, doc.get("recorded"), doc)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise CaseError(f"{path}: `steps:` must be a non-empty list (or give `call: FILE`)")
    if expect.turns is not None:
        raise CaseError(f"{path}: expect.turns is for recorded calls; in a script, put `expect:` on the steps")
    steps = []
    for number, raw in enumerate(raw_steps, 1):
        if not isinstance(raw, dict):
            continue  # the harness reports it when it loads the script
        action = next((a for a in ACTIONS if a in raw), None)
        reply = _reply_expect(raw.get("expect"), f"{path}: step {number}: expect")
        if action in ("say", "audio", "dtmf"):
            steps.append((number, f"{action} {_short(str(raw[action]))}", reply))
        elif reply is not None:
            raise CaseError(f"{path}: step {number}: only say, audio and dtmf steps have a reply to expect")
    return Case(path, name, path, "script", steps, expect, doc.get("recorded"), doc)


def quoted(text: str) -> str:
    return f'"{text}"'


def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return quoted(text if len(text) <= n else text[: n - 1] + "…")


def _phrases(value: Any, where: str) -> list[Phrase]:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict) and set(item) == {"meaning"} and isinstance(item["meaning"], str):
            out.append(Phrase("meaning", item["meaning"]))
        elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
            text = str(item)
            if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
                try:
                    re.compile(text[1:-1])
                except re.error as exc:
                    raise CaseError(f"{where}: {text}: not a regular expression ({exc})") from None
                out.append(Phrase("regex", text[1:-1]))
            elif _words(text):
                out.append(Phrase("text", text))
            else:
                raise CaseError(f"{where}: {text!r} has no words to look for")
        else:
            raise CaseError(f"{where}: {item!r}: use text, '/regex/', {{meaning: '...'}} or a list of them")
    return out


def _budget(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise CaseError(f"{where}: {value!r} is not a number of milliseconds above 0")
    return float(value)


def _reply_expect(raw: Any, where: str) -> ReplyExpect | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: a mapping of {', '.join(STEP_KEYS)}")
    unknown = set(raw) - set(STEP_KEYS)
    if unknown:
        raise CaseError(f"{where}: unknown {', '.join(sorted(map(str, unknown)))} (known: {', '.join(STEP_KEYS)})")
    e = ReplyExpect()
    if "says" in raw:
        e.says = _phrases(raw["says"], f"{where}.says")
    if "not_says" in raw:
        e.not_says = _phrases(raw["not_says"], f"{where}.not_says")
    if raw.get("within_ms") is not None:
        e.within_ms = _budget(raw["within_ms"], f"{where}.within_ms")
    if "heard" in raw:
        e.heard = "" if raw["heard"] is None else str(raw["heard"])
    if raw.get("caller") is not None:
        e.caller = str(raw["caller"])
    return e


def _call_expect(raw: Any, where: str) -> CallExpect:
    if raw is None:
        return CallExpect()
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: a mapping of {', '.join(CALL_KEYS)}")
    unknown = set(raw) - set(CALL_KEYS)
    if unknown:
        raise CaseError(f"{where}: unknown {', '.join(sorted(map(str, unknown)))} (known: {', '.join(CALL_KEYS)})")
    e = CallExpect(greeting=_reply_expect(raw.get("greeting"), f"{where}.greeting"))
    if "turns" in raw:
        if not isinstance(raw["turns"], list):
            raise CaseError(f"{where}.turns: a list, one entry per caller turn")
        e.turns = [_reply_expect(t, f"{where}.turns[{i}]") for i, t in enumerate(raw["turns"], 1)]
    if raw.get("transfer") is not None:
        e.transfer = str(raw["transfer"])
    if raw.get("hangup") is not None:
        if not isinstance(raw["hangup"], bool):
            raise CaseError(f"{where}.hangup: true or false")
        e.hangup = raw["hangup"]
    tools = raw.get("tool")
    for item in tools if isinstance(tools, list) else ([] if tools is None else [tools]):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name", "arguments"}:
            raise CaseError(f"{where}.tool: {{name: NAME, arguments: {{...}}}} (or a list of them)")
        args = item.get("arguments") or {}
        if not isinstance(args, dict):
            raise CaseError(f"{where}.tool: arguments must be a mapping")
        e.tools.append(ToolExpect(item["name"], args))
    barge = raw.get("barge_in")
    if barge is not None:
        if not isinstance(barge, dict) or set(barge) != {"clear_within_ms"}:
            raise CaseError(f"{where}.barge_in: {{clear_within_ms: N}}")
        e.clear_within_ms = _budget(barge["clear_within_ms"], f"{where}.barge_in.clear_within_ms")
    return e


# --- what happened on the call ------------------------------------------------------------------


@dataclass
class Reply:
    """The bot's reply to one caller turn: the words the caller heard, and when it began."""

    heard: str
    latency_ms: float | None
    caller_start_ms: float
    caller_end_ms: float
    caller_text: str | None = None
    #: The caller cut the bot short (a barge-in, a key): `whole` is what was heard of the pieces
    #: played whole; where the cut fell inside the next piece varies by milliseconds.
    cut: bool = False
    whole: str = ""


@dataclass
class Outcome:
    greeting: Reply
    replies: list[Reply]
    tools: list[dict]  # {"name", "arguments", "ms"}
    ended_by: str
    failed: bool
    errors: list[dict]
    barge_ins: list[dict]
    #: False when the bot's words could not be known (no side channel): `says` cannot be judged.
    words_known: bool = True
    #: The carrier has a `clear` (AudioSocket has not): a barge-in is judged by it, else by the
    #: bot going quiet as the caller hears it.
    has_clear: bool = True


#: A bot turn dated up to this much before a caller's action still answers it: the server's
#: clock and the harness's are lined up only to within the network's delay.
CLOCK_SLACK_MS = 100.0


def event_clock(report: dict, events: list[dict], speed: float = 1.0) -> tuple[float, float]:
    """(scale, offset) turning an engine event's `t_ms` (the server's wall clock from the call's
    start) into call time: times the clock's speed, plus how much later the harness received the
    greeting's first audio than the server says it sent it (the network's delay)."""
    offset = 0.0
    sent = next((e for e in events if e.get("type") == "latency" and e.get("greeting")), None)
    media = report["bot"]["media"]
    if sent is not None and media:
        offset = max(0.0, min(1000.0, media[0]["recv_ms"] - float(sent.get("t_ms", 0.0)) * speed))
    return speed, offset


def heard_pieces(events: list[dict], marks: list[dict], clock: tuple[float, float] = (1.0, 0.0),
                 playout: "Playout | None" = None) -> list[tuple[float, int, str, bool]]:
    """(call ms, bot turn, words the caller heard, heard whole) of each piece the bot spoke, from its engine
    events (`bot` pieces; `cut`: what was heard of a cut turn, from its heard-text ledger) and
    either the harness's marks (a piece whose mark played was heard whole) or, for a carrier
    without marks, the harness's `playout` of the bot's audio (see `played_whole`). `clock`: see
    `event_clock`."""
    scale, offset = clock
    played = {m["name"] for m in marks if m.get("outcome") == "played"}
    cut: dict[str, str] = {}
    for ev in events:
        if ev.get("type") == "cut":
            for p in ev.get("pieces", []):
                cut[str(p.get("mark"))] = str(p.get("heard") or "")
    spoken = [ev for ev in events if ev.get("type") == "bot" and ev.get("text")]
    if playout is not None:
        played = played_whole(spoken, playout, clock)
    out = []
    for ev in spoken:
        mark = str(ev.get("mark"))
        words = cut[mark] if mark in cut else (str(ev["text"]) if mark in played else "")
        if words:
            out.append((float(ev.get("t_ms", 0.0)) * scale + offset, int(ev.get("turn", 0)), words, words == ev["text"]))
    return out


@dataclass
class Playout:
    """The bot's audio as the harness played it, for a carrier without marks."""

    #: (start, end) call ms of each piece of bot audio played before the call ended.
    audio: list[tuple[float, float]]
    end_ms: float
    #: The bot ended the call: its engine lets its audio play out before it hangs up.
    bot_ended: bool

    @classmethod
    def of(cls, report: dict) -> "Playout":
        end = float(report["call"]["duration_ms"] or 0.0)
        audio = [(m["play_ms"], m["play_ms"] + m["played_bytes"] / 8) for m in report["bot"]["media"] if m["play_ms"] < end]
        return cls(audio, end, report["call"]["ended_by"] == "bot")


def played_whole(spoken: list[dict], playout: Playout, clock: tuple[float, float]) -> set[str]:
    """The marks of the pieces heard whole on a carrier without marks. Such a carrier plays what
    it is given as it is given, so the bot's own playout clock is the truth: what the engine did
    not cut was heard (a cut comes with its `cut` event), as long as the call lasted. The
    harness's playout bounds that: a turn none of whose audio played before the call ended was
    not heard, and a turn whose audio was still playing when the caller hung up was cut off
    somewhere the harness cannot tell (no marks say which pieces were out): none of it counts
    as heard whole."""
    scale, offset = clock
    starts: dict[int, float] = {}
    for ev in spoken:
        turn = int(ev.get("turn", 0))
        starts.setdefault(turn, float(ev.get("t_ms", 0.0)) * scale + offset)
    order = sorted(starts, key=lambda t: starts[t])
    heard_turns = set()
    for i, turn in enumerate(order):
        begin = starts[turn] - CLOCK_SLACK_MS
        until = starts[order[i + 1]] - CLOCK_SLACK_MS if i + 1 < len(order) else math.inf
        mine = [(a, b) for a, b in playout.audio if begin <= a < until]
        if not mine:
            continue
        # Paced audio runs a frame or two ahead of the caller's ear: a bot still talking when the
        # caller hung up had audio playing right up to the end.
        cut_off = not playout.bot_ended and max(b for _, b in mine) >= playout.end_ms - FRAME_MS
        if not cut_off:
            heard_turns.add(turn)
    return {str(ev.get("mark")) for ev in spoken if int(ev.get("turn", 0)) in heard_turns}


def build_outcome(report: dict, spans: list[tuple[float, float]], events: list[dict], speed: float = 1.0,
                  words_known: bool = True, caller_texts: list[str | None] | None = None,
                  has_marks: bool = True, has_clear: bool = True) -> Outcome:
    """The reply to caller turn i is what the bot said in turns it began between that turn's start
    and the next one's (a bot turn is dated by its first piece); its latency is the first voiced
    bot audio played after the caller's turn ended and before the next, minus that end.
    `has_marks`, `has_clear`: what the carrier the harness played has (ivr.harness.carriers)."""
    scale, offset = clock = event_clock(report, events, speed)
    playout = None if has_marks else Playout.of(report)
    pieces = heard_pieces(events, report["marks"], clock, playout)
    turn_start: dict[int, float] = {}
    cut_turns = {int(ev.get("turn", 0)) for ev in events if ev.get("type") == "cut"}
    for t, turn, _, _ in pieces:
        turn_start[turn] = min(t, turn_start.get(turn, t))
    for ev in events:  # a turn heard only in part is dated by its first piece, heard or not
        if ev.get("type") == "bot" and int(ev.get("turn", 0)) in turn_start:
            turn_start[int(ev["turn"])] = min(turn_start[int(ev["turn"])], float(ev.get("t_ms", 0.0)) * scale + offset)
    voiced = [a for a, _ in report["bot"]["speech"]]
    starts = [a for a, _ in spans] + [math.inf]

    def reply(a: float, b: float, latency: float | None, span: tuple[float, float], text: str | None) -> Reply:
        mine = [(turn, w, whole) for _t, turn, w, whole in pieces if a - CLOCK_SLACK_MS <= turn_start[turn] < b - CLOCK_SLACK_MS]
        cut = any(turn in cut_turns for turn, _, _ in mine)
        # What was heard whole: the pieces before the first one the cut caught.
        whole = []
        for _turn, w, complete in mine:
            if not complete:
                break
            whole.append(w)
        return Reply(" ".join(w for _, w, _ in mine), latency, span[0], span[1], text, cut, " ".join(whole))

    def first_voice(a: float, b: float) -> float | None:
        return next((v for v in voiced if a <= v < b), None)

    greeting = reply(-math.inf, starts[0], first_voice(0.0, starts[0]), (0.0, 0.0), None)
    replies = []
    for i, (a, b) in enumerate(spans):
        v = first_voice(b, starts[i + 1])
        text = caller_texts[i] if caller_texts and i < len(caller_texts) else None
        replies.append(reply(a, starts[i + 1], None if v is None else round(v - b, 1), (a, b), text))
    tools = [{"name": str(ev.get("name")), "arguments": dict(ev.get("arguments") or {}),
              "ms": float(ev.get("t_ms", 0.0)) * scale + offset} for ev in events if ev.get("type") == "tool"]
    barge_ins = list(report["barge_ins"])
    if not has_clear:
        barge_ins = [{**b, "quiet_after_ms": quiet_after(b)} for b in barge_ins]
    return Outcome(greeting, replies, tools, report["call"]["ended_by"], bool(report["call"]["failed"]),
                   list(report["errors"]), barge_ins, words_known, has_clear)


# --- the checks ---------------------------------------------------------------------------------


@dataclass
class Failure:
    where: str  # "greeting", "step 3 (say 'hours')", "turn 2", "call"
    what: str  # "says", "not_says", "heard", "within_ms", "transfer", ...
    expected: str
    heard: str
    diff: str | None = None

    def lines(self) -> list[str]:
        out = [f"{self.where}: {self.what}", f"  expected: {self.expected}", f"  heard:    {self.heard}"]
        if self.diff:
            out.append(f"  diff:     {self.diff}")
        return out


@dataclass
class Skip:
    where: str
    what: str
    reason: str


#: (where, meaning, heard) -> (holds, the judge's reason), or None when no judge is available.
Judgements = dict[tuple[str, str, str], "tuple[bool, str] | None"]


def _words(text: str) -> list[str]:
    """Lower-case words, punctuation aside (apostrophes kept: "we're")."""
    return re.findall(r"[\w']+", text.lower().replace("’", "'"))


def phrase_found(phrase: Phrase, heard: str) -> bool:
    if phrase.kind == "regex":
        return re.search(phrase.value, heard, re.IGNORECASE) is not None
    want, got = _words(phrase.value), _words(heard)
    n = len(want)
    return any(got[i : i + n] == want for i in range(len(got) - n + 1))


def same_words(a: str, b: str) -> bool:
    return _words(a) == _words(b)


def word_diff(expected: str, heard: str) -> str:
    """The words that changed, as `[-gone-] {+new+}` around the words kept."""
    a, b = expected.split(), heard.split()
    out = []
    key = lambda w: " ".join(_words(w))  # noqa: E731 - compared case and punctuation aside
    sm = difflib.SequenceMatcher(a=[key(w) for w in a], b=[key(w) for w in b], autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out += a[i1:i2]
        else:
            if i2 > i1:
                out.append("[-" + " ".join(a[i1:i2]) + "-]")
            if j2 > j1:
                out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


def pending_meanings(case: Case, outcome: Outcome) -> list[tuple[str, str, str]]:
    """The (where, meaning, heard) a judge must rule on before `check`."""
    out = []
    for where, e, reply in _pairs(case, outcome):
        if e is not None and reply is not None:
            out += [(where, p.value, reply.heard) for p in e.says + e.not_says if p.kind == "meaning"]
    return out


def _pairs(case: Case, outcome: Outcome) -> list[tuple[str, ReplyExpect | None, Reply | None]]:
    pairs = [("greeting", case.expect.greeting, outcome.greeting)]
    if case.kind == "script":
        for i, (number, label, e) in enumerate(case.steps):
            pairs.append((f"step {number} ({label})", e, outcome.replies[i] if i < len(outcome.replies) else None))
    elif case.expect.turns is not None:
        for i, e in enumerate(case.expect.turns):
            said = e.caller if e is not None else None
            label = f"turn {i + 1}" + ("" if not said else f" {said}" if said.startswith("(") else f" ({quoted(said)})")
            pairs.append((label, e, outcome.replies[i] if i < len(outcome.replies) else None))
    return pairs


def check(case: Case, outcome: Outcome, judgements: Judgements | None = None,
          budget_scale: float = 1.0) -> tuple[list[Failure], list[Skip]]:
    """Failures (each with what was expected and what the caller heard) and skipped checks.
    Latency budgets are multiplied by `budget_scale` (a slow machine, a faster call clock)."""
    judgements = judgements or {}
    failures: list[Failure] = []
    skips: list[Skip] = []
    failures += _call_health(outcome)
    if case.kind == "call" and case.expect.turns is not None and len(case.expect.turns) != len(outcome.replies):
        failures.append(Failure("call", "turns", f"{len(case.expect.turns)} caller turns",
                                f"{len(outcome.replies)} caller turns found in the call"))
    for where, e, reply in _pairs(case, outcome):
        if e is None:
            continue
        if reply is None:
            failures.append(Failure(where, "reply", "a caller turn here", "the call ended before it"))
            continue
        heard = reply.heard
        shown = quoted(heard) if heard else "(nothing)"
        if not outcome.words_known and (e.says or e.not_says or e.heard is not None):
            skips.append(Skip(where, "says", "the bot's words are unknown (its event side channel is off)"))
        else:
            for p in e.says:
                ok = _judge(p, heard, where, judgements, skips, "says")
                if ok is False:
                    failures.append(Failure(where, "says", p.describe(), shown, _reason(p, heard, where, judgements)))
            for p in e.not_says:
                ok = _judge(p, heard, where, judgements, skips, "not_says")
                if ok is True:
                    failures.append(Failure(where, "not_says", f"not {p.describe()}", shown, _reason(p, heard, where, judgements)))
            if e.heard is not None and not same_words(e.heard, heard):
                failures.append(Failure(where, "heard", quoted(e.heard) if e.heard else "(nothing)", shown, word_diff(e.heard, heard)))
        if e.within_ms is not None:
            budget = e.within_ms * budget_scale
            if reply.latency_ms is None:
                failures.append(Failure(where, "within_ms", f"first audio within {budget:.0f} ms", "no bot audio before the next turn"))
            elif reply.latency_ms > budget:
                failures.append(Failure(where, "within_ms", f"first audio within {budget:.0f} ms",
                                        f"first audio after {reply.latency_ms:.0f} ms"))
    failures += _actions(case.expect, outcome, budget_scale)
    return failures, skips


def _judge(p: Phrase, heard: str, where: str, judgements: Judgements, skips: list[Skip], what: str) -> bool | None:
    if p.kind != "meaning":
        return phrase_found(p, heard)
    verdict = judgements.get((where, p.value, heard))
    if verdict is None:
        skips.append(Skip(where, f"{what} meaning {quoted(p.value)}", "no judge model (set OPENAI_API_KEY)"))
        return None
    return verdict[0]


def _reason(p: Phrase, heard: str, where: str, judgements: Judgements) -> str | None:
    if p.kind == "meaning":
        verdict = judgements.get((where, p.value, heard))
        return f"judge: {verdict[1]}" if verdict and verdict[1] else None
    return None


def _call_health(outcome: Outcome) -> list[Failure]:
    out = []
    if outcome.failed:
        detail = "; ".join(f"{e['kind']}: {e['detail']}" for e in outcome.errors) or f"ended by {outcome.ended_by}"
        out.append(Failure("call", "call", "a call that runs to a hang-up", detail))
    for e in outcome.errors:
        at = f"at {e['ms'] / 1000:.1f} s"
        if e["kind"] == "timeout":
            out.append(Failure("call", "timeout", "the bot to answer each step", f"{at}: {e['detail']}"))
        elif e["kind"] == "max_duration":
            out.append(Failure("call", "max_call", "a call that ends by itself", f"{at}: {e['detail']}"))
        elif e["kind"] not in _CALL_BROKEN:  # those are the failed call's own failure above
            out.append(Failure("call", "protocol", "no protocol errors", f"{at}: {e['kind']}: {e['detail']}"))
    for b in outcome.barge_ins:
        if b["frames_after_clear"]:
            out.append(Failure("call", "barge_in", "no bot audio after its clear",
                               f"{b['frames_after_clear']} frames after the clear at {b['clear_ms'] / 1000:.2f} s"))
    return out


def _args_match(want: dict, got: dict) -> bool:
    for key, value in want.items():
        if key not in got:
            return False
        if isinstance(value, str) and isinstance(got[key], str):
            if not (re.fullmatch(value[1:-1], got[key]) if len(value) >= 2 and value[0] == value[-1] == "/" else value == got[key]):
                return False
        elif value != got[key]:
            return False
    return True


def _show_tools(tools: list[dict]) -> str:
    return ", ".join(f"{t['name']}({', '.join(f'{k}={v!r}' for k, v in t['arguments'].items())})" for t in tools) or "no tool"


def _actions(e: CallExpect, outcome: Outcome, budget_scale: float) -> list[Failure]:
    out = []
    tools = outcome.tools
    if e.transfer is not None:
        to = [str(t["arguments"].get("to", "")) for t in tools if t["name"] == "transfer"]
        if e.transfer not in to:
            out.append(Failure("call", "transfer", f"a transfer to {e.transfer}",
                               f"a transfer to {to[0]}" if to else _show_tools(tools)))
    if e.hangup is not None:
        hung = any(t["name"] == "hangup" for t in tools)
        if hung != e.hangup:
            out.append(Failure("call", "hangup", "the bot hangs up" if e.hangup else "the bot does not hang up",
                               _show_tools(tools) if not hung else "it hung up"))
    for want in e.tools:
        if not any(t["name"] == want.name and _args_match(want.arguments, t["arguments"]) for t in tools):
            args = ", ".join(f"{k}={v!r}" for k, v in want.arguments.items())
            out.append(Failure("call", "tool", f"{want.name}({args})", _show_tools(tools)))
    if e.clear_within_ms is not None:
        budget = e.clear_within_ms * budget_scale
        if outcome.has_clear:
            want = f"clear within {budget:.0f} ms"
        else:
            want = f"the bot quiet within {budget:.0f} ms (the audible stop: this carrier has no clear)"
        if not outcome.barge_ins:
            out.append(Failure("call", "barge_in", f"a barge-in, then {want}", "no barge-in happened"))
        for b in outcome.barge_ins:
            at = f"barge-in at {b['caller_speech_start_ms'] / 1000:.2f} s"
            latency = stop_latency(b, outcome.has_clear)
            if latency is None and outcome.has_clear:
                out.append(Failure("call", "barge_in", want, f"{at}: the bot sent no clear"))
            elif latency is None:
                out.append(Failure("call", "barge_in", want, f"{at}: the bot did not go quiet"))
            elif latency > budget:
                stopped = "clear" if outcome.has_clear else "quiet"
                out.append(Failure("call", "barge_in", want, f"{at}: {stopped} after {latency:.0f} ms"))
    return out


def stop_latency(barge_in: dict, has_clear: bool = True) -> float | None:
    """How soon after the caller began the bot stopped (an outcome's barge-in): its `clear`, or on
    a carrier without one, where the bot stops by no longer sending, when the caller heard it go
    quiet (`quiet_after`). None: it did not stop."""
    if has_clear:
        return barge_in["latency_ms"]
    return barge_in.get("quiet_after_ms", barge_in.get("audible_stop_latency_ms"))


def quiet_after(barge_in: dict) -> float:
    """When the caller heard the bot go quiet for good, in ms from their start: the report's
    audible stop, 0 when no bot voice played while they spoke (it was quiet already)."""
    latency = barge_in.get("audible_stop_latency_ms")
    return 0.0 if latency is None else float(latency)


def latency_budget(latency_ms: float | None, factor: float = 1.5, slack_ms: float = 500.0) -> int | None:
    """A budget for a measured latency: the larger of factor x and + slack, up to 100 ms."""
    if latency_ms is None:
        return None
    return int(math.ceil(max(latency_ms * factor, latency_ms + slack_ms) / 100.0) * 100)


def baseline(outcome: Outcome) -> dict:
    """Today's outcome as a recorded case's `expect:` (YAML-ready)."""

    def reply(r: Reply) -> dict:
        out: dict = {}
        if r.caller_text:
            out["caller"] = r.caller_text
        if r.cut:
            if r.whole:
                out["says"] = r.whole
        else:
            out["heard"] = r.heard
        if (budget := latency_budget(r.latency_ms)) is not None:
            out["within_ms"] = budget
        return out

    expect: dict = {"greeting": reply(outcome.greeting), "turns": [reply(r) for r in outcome.replies]}
    transfers = [t for t in outcome.tools if t["name"] == "transfer"]
    if transfers:
        expect["transfer"] = str(transfers[0]["arguments"].get("to", ""))
    expect["hangup"] = any(t["name"] == "hangup" for t in outcome.tools)
    others = [{"name": t["name"], "arguments": t["arguments"]} for t in outcome.tools if t["name"] not in ("transfer", "hangup")]
    if others:
        expect["tool"] = others
    # Without a clear, the budget is the audible stop's, under the same key: both time the bot's
    # decision to stop (a clear, or the end of the little it had sent ahead), so a case recorded
    # over one carrier still checks barge-ins over another, within the budget's margin.
    stopped = [stop_latency(b, outcome.has_clear) for b in outcome.barge_ins]
    stopped = [t for t in stopped if t is not None]
    if stopped:
        expect["barge_in"] = {"clear_within_ms": latency_budget(max(stopped))}
    return expect
