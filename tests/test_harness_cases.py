"""`ivr test`'s expectations, without a server: case files, what the caller heard, the checks."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ivr.harness.cases import (
    CaseError,
    Phrase,
    baseline,
    build_outcome,
    check,
    find_cases,
    latency_budget,
    parse_case,
    pending_meanings,
    phrase_found,
    word_diff,
)
from ivr.harness.report import audible_stop
from ivr.harness.judge import JudgeError, parse_verdict
from ivr.harness.suite import CaseResult
from ivr.harness.suite_report import junit_xml


def case_file(tmp_path: Path, body: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def report(marks=(), speech=(), barge_ins=(), errors=(), ended_by="caller", failed=False, media_recv=61.0) -> dict:
    """The parts of a harness report.json that the checks read."""
    return {
        "call": {"duration_ms": 20000.0, "ended_by": ended_by, "failed": failed},
        "marks": [{"name": n, "outcome": o} for n, o in marks],
        "bot": {"speech": [list(s) for s in speech], "media": [{"recv_ms": media_recv}]},
        "barge_ins": list(barge_ins),
        "errors": list(errors),
        "turns": [],
    }


def bot(turn: int, piece: int, text: str, t_ms: float) -> dict:
    return {"type": "bot", "turn": turn, "piece": piece, "mark": f"t{turn}-p{piece}", "text": text, "t_ms": t_ms}


GREETING = [bot(1, 0, "Thanks for calling Sunrise Bakery.", 1.0), bot(1, 1, "Press 1 for hours.", 1.0),
            {"type": "latency", "turn": 1, "greeting": True, "total_ms": 55.0, "t_ms": 55.0}]
HOURS_CASE = """
    name: hours
    expect:
      greeting: {says: "sunrise bakery"}
      hangup: true
    steps:
      - say: "What time are you open?"
        expect:
          says: ["we're open", "/tuesday|sunday/"]
          not_says: sorry
          within_ms: 1000
      - pause: 1
      - say: "Bye"
"""


def test_a_script_case_lists_its_caller_steps_with_their_expectations(tmp_path):
    case = parse_case(case_file(tmp_path, HOURS_CASE))
    assert case.kind == "script" and case.name == "hours" and case.call == case.path
    assert [(n, label) for n, label, _ in case.steps] == [(1, 'say "What time are you open?"'), (3, 'say "Bye"')]
    first = case.steps[0][2]
    assert [p.kind for p in first.says] == ["text", "regex"] and first.within_ms == 1000
    assert case.steps[1][2] is None and case.expect.hangup is True


@pytest.mark.parametrize("body, message", [
    ("steps: [{say: hi, expect: {sayz: x}}]", "unknown sayz"),
    ("steps: [{pause: 1, expect: {says: x}}]", "only say, audio and dtmf"),
    ("steps: [{say: hi, expect: {says: '/(/'}}]", "not a regular expression"),
    ("steps: [{say: hi, expect: {within_ms: -5}}]", "milliseconds above 0"),
    ("steps: [{say: hi}]\nexpect: {barge_in: {clear_within: 3}}", "clear_within_ms"),
    ("steps: [{say: hi}]\nexpect: {tool: {name: x, args: {}}}", "{name: NAME"),
    ("call: missing.jsonl", "is not a file"),
    ("- just a list", "a mapping"),
])
def test_a_bad_case_is_a_usage_error_that_says_where(tmp_path, body, message):
    with pytest.raises(CaseError, match=message.replace("(", r"\(").replace("{", r"\{")):
        parse_case(case_file(tmp_path, body))


def test_cases_are_found_in_folders_in_name_order(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.yaml", "a.yml", "notes.txt"):
        (tmp_path / name).write_text("steps: [{say: hi}]")
    assert [p.relative_to(tmp_path).as_posix() for p in find_cases([tmp_path])] == ["a.yml", "b/2.yaml"]
    with pytest.raises(CaseError, match="no such file"):
        find_cases([tmp_path / "nope"])


def test_phrases_ignore_case_and_punctuation_but_match_whole_words():
    heard = "We're open Tuesday to Sunday, from seven."
    assert phrase_found(Phrase("text", "WE'RE OPEN tuesday"), heard)
    assert phrase_found(Phrase("text", "sunday from seven"), heard)
    assert not phrase_found(Phrase("text", "day"), heard)
    assert phrase_found(Phrase("regex", r"open \w+day"), heard)
    assert not phrase_found(Phrase("regex", "monday"), heard)


def test_the_reply_to_a_step_is_what_the_caller_heard_after_it():
    events = GREETING + [
        bot(2, 0, "We're open Tuesday to Sunday.", 5000.0), bot(2, 1, "Anything else?", 5000.0),
        {"type": "tool", "turn": 3, "name": "hangup", "arguments": {}, "t_ms": 9000.0},
        bot(3, 0, "Goodbye!", 8600.0),
    ]
    marks = [("t1-p0", "played"), ("t1-p1", "played"), ("t2-p0", "played"), ("t2-p1", "pending"), ("t3-p0", "played")]
    rep = report(marks, speech=[(61, 3000), (5300, 6500), (8900, 9500)])
    outcome = build_outcome(rep, [(4000.0, 4700.0), (8000.0, 8400.0)], events)
    assert outcome.greeting.heard == "Thanks for calling Sunrise Bakery. Press 1 for hours."
    # The second piece's mark never came back: the caller hung up before hearing it.
    assert outcome.replies[0].heard == "We're open Tuesday to Sunday."
    assert outcome.replies[0].latency_ms == 600.0
    assert outcome.replies[1].heard == "Goodbye!" and outcome.tools[0]["name"] == "hangup"
    case = parse_case_text(HOURS_CASE)
    failures, skips = check(case, outcome)
    assert failures == [] and skips == []


def parse_case_text(body: str):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return parse_case(case_file(Path(tmp), body))


def test_a_cut_turn_counts_only_the_words_heard_before_the_cut():
    events = GREETING + [
        {"type": "cut", "turn": 1, "reason": "barge-in", "heard": "Thanks for calling Sunrise Bakery. Press",
         "pieces": [{"piece": 0, "mark": "t1-p0", "text": "Thanks for calling Sunrise Bakery.", "heard": "Thanks for calling Sunrise Bakery."},
                    {"piece": 1, "mark": "t1-p1", "text": "Press 1 for hours.", "heard": "Press"}]},
    ]
    rep = report([("t1-p0", "played"), ("t1-p1", "cleared")], speech=[(61, 2500)])
    outcome = build_outcome(rep, [(2400.0, 3000.0)], events)
    assert outcome.greeting.heard == "Thanks for calling Sunrise Bakery. Press"
    assert outcome.greeting.cut and outcome.greeting.whole == "Thanks for calling Sunrise Bakery."
    case = parse_case_text("""
        expect: {greeting: {says: "press 1 for hours"}}
        steps: [{say: "hours", after: bot_speaking 2}]
    """)
    failures, _ = check(case, outcome)
    assert [(f.where, f.what, f.expected, f.heard) for f in failures] == [
        ("greeting", "says", '"press 1 for hours"', '"Thanks for calling Sunrise Bakery. Press"')]


def test_a_reply_that_comes_at_once_is_not_taken_for_the_greeting():
    # The server's clock starts a little after the harness's: a key's instant reply can be
    # stamped a few ms before the key was sent, by the harness's clock.
    events = GREETING + [bot(2, 0, "We're at twelve Market Street.", 2998.0)]
    rep = report([("t1-p0", "played"), ("t1-p1", "played"), ("t2-p0", "played")], speech=[(61, 2000), (3100, 4000)], media_recv=58.0)
    outcome = build_outcome(rep, [(3002.0, 3002.0)], events)
    assert outcome.replies[0].heard == "We're at twelve Market Street."
    assert "Market" not in outcome.greeting.heard


def failures_of(case_body: str, outcome) -> list[tuple[str, str]]:
    failures, _ = check(parse_case_text(case_body), outcome)
    return [(f.what, f.heard) for f in failures]


def outcome_with(reply_text: str, latency: float | None = 600.0, tools=(), barge_ins=(), errors=(), failed=False):
    events = GREETING + [bot(2, 0, reply_text, 5000.0)] + [
        {"type": "tool", "turn": 2, "name": n, "arguments": a, "t_ms": 5100.0} for n, a in tools]
    speech = [(61, 3000)] + ([(4700 + latency, 6000)] if latency is not None else [])
    rep = report([("t1-p0", "played"), ("t1-p1", "played"), ("t2-p0", "played")], speech=speech,
                 barge_ins=barge_ins, errors=errors, failed=failed)
    return build_outcome(rep, [(4000.0, 4700.0)], events)


def markless_report(audio: list[tuple[float, float]], duration_ms: float, ended_by: str = "caller") -> dict:
    """A report from a carrier without marks (AudioSocket): only the bot's audio as it played."""
    rep = report(speech=audio, ended_by=ended_by)
    rep["call"]["duration_ms"] = duration_ms
    rep["bot"]["media"] = [{"recv_ms": a, "play_ms": a, "bytes": int((b - a) * 8), "played_bytes": int((b - a) * 8)}
                           for a, b in audio]
    return rep


HOURS_THEN_BYE = GREETING + [
    bot(2, 0, "We're open Tuesday to Sunday.", 5000.0), bot(2, 1, "Anything else?", 5000.0),
    bot(3, 0, "Thanks for calling.", 8600.0), bot(3, 1, "Have a lovely day!", 8600.0),
]
CALLER = [(4000.0, 4700.0), (8000.0, 8400.0)]


def test_without_marks_what_the_bot_did_not_cut_was_heard_while_the_call_lasted():
    # The caller hangs up at 10 s while the bot's goodbye still plays (its audio runs to the end).
    rep = markless_report([(61, 3000), (5300, 7000), (8900, 10000)], duration_ms=10000.0)
    outcome = build_outcome(rep, CALLER, HOURS_THEN_BYE, has_marks=False)
    assert outcome.greeting.heard == "Thanks for calling Sunrise Bakery. Press 1 for hours."
    assert outcome.replies[0].heard == "We're open Tuesday to Sunday. Anything else?" and not outcome.replies[0].cut
    # No mark says how much of the goodbye was out: none of it counts as heard whole.
    assert outcome.replies[1].heard == ""
    # The same call read as a carrier with marks: none came back, so nothing was heard.
    assert build_outcome(rep, CALLER, HOURS_THEN_BYE).greeting.heard == ""

    # The bot hung up itself: its engine lets its words play out first.
    ended_by_bot = markless_report([(61, 3000), (5300, 7000), (8900, 10000)], duration_ms=10000.0, ended_by="bot")
    assert build_outcome(ended_by_bot, CALLER, HOURS_THEN_BYE, has_marks=False).replies[1].heard == \
        "Thanks for calling. Have a lovely day!"
    # A turn none of whose audio played before the caller hung up was not heard at all.
    silent = markless_report([(61, 3000), (5300, 7000)], duration_ms=12000.0)
    assert build_outcome(silent, CALLER, HOURS_THEN_BYE, has_marks=False).replies[1].heard == ""


def test_without_marks_a_cut_turn_is_still_what_its_cut_event_says_was_heard():
    events = HOURS_THEN_BYE[:3] + [
        {"type": "cut", "turn": 1, "reason": "barge-in", "heard": "Thanks for calling Sunrise Bakery. Press",
         "pieces": [{"piece": 0, "mark": "t1-p0", "text": "Thanks for calling Sunrise Bakery.", "heard": "Thanks for calling Sunrise Bakery."},
                    {"piece": 1, "mark": "t1-p1", "text": "Press 1 for hours.", "heard": "Press"}]},
    ] + HOURS_THEN_BYE[3:]
    rep = markless_report([(61, 2500), (5300, 7000), (8900, 9500)], duration_ms=12000.0, ended_by="bot")
    outcome = build_outcome(rep, [(2400.0, 3000.0), (8000.0, 8400.0)], events, has_marks=False)
    assert outcome.greeting.heard == "Thanks for calling Sunrise Bakery. Press"
    assert outcome.greeting.cut and outcome.greeting.whole == "Thanks for calling Sunrise Bakery."
    assert outcome.replies[0].heard == "We're open Tuesday to Sunday. Anything else?"


def test_each_expectation_fails_with_what_was_expected_and_what_was_heard():
    body = """
        expect:
          transfer: "+15550100123"
          tool: {name: lookup, arguments: {order: "/\\\\d{4}/"}}
        steps:
          - say: "hours"
            expect: {says: "we're open", not_says: "/sorry/", within_ms: 500}
    """
    outcome = outcome_with("Sorry, I didn't catch that.", latency=900.0, tools=[("lookup", {"order": "12"})])
    assert failures_of(body, outcome) == [
        ("says", '"Sorry, I didn\'t catch that."'),
        ("not_says", '"Sorry, I didn\'t catch that."'),
        ("within_ms", "first audio after 900 ms"),
        ("transfer", "lookup(order='12')"),
        ("tool", "lookup(order='12')"),
    ]
    good = outcome_with("We're open now.", latency=300.0, tools=[("lookup", {"order": "4572"}), ("transfer", {"to": "+15550100123"})])
    assert failures_of(body, good) == []


def test_latency_budgets_scale_with_the_margin():
    case = parse_case_text("steps: [{say: hi, expect: {within_ms: 500}}]")
    outcome = outcome_with("Hello.", latency=900.0)
    assert check(case, outcome)[0] and not check(case, outcome, budget_scale=2.0)[0]


def test_barge_ins_hangups_and_protocol_errors():
    body = "expect: {hangup: true, barge_in: {clear_within_ms: 300}}\nsteps: [{say: hi}]"
    barge = {"caller_speech_start_ms": 2000.0, "clear_ms": 2500.0, "latency_ms": 500.0, "frames_after_clear": 3}
    error = {"ms": 100.0, "kind": "bad_json", "detail": "not JSON"}
    got = failures_of(body, outcome_with("Hi.", barge_ins=[barge], errors=[error]))
    assert got == [
        ("protocol", "at 0.1 s: bad_json: not JSON"),
        ("barge_in", "3 frames after the clear at 2.50 s"),
        ("hangup", "no tool"),
        ("barge_in", "barge-in at 2.00 s: clear after 500 ms"),
    ]
    assert ("barge_in", "no barge-in happened") in failures_of(body, outcome_with("Hi."))
    failed = outcome_with("Hi.", errors=[{"ms": 0.0, "kind": "connect_failed", "detail": "refused"}], failed=True)
    assert failures_of("steps: [{say: hi}]", failed) == [("call", "connect_failed: refused")]
    waits = [{"ms": 21000.0, "kind": "timeout", "detail": "'bot_silent 0.6': bot did not oblige within 20 s"},
             {"ms": 300000.0, "kind": "max_duration", "detail": "hung up after 300 s"}]
    assert [w for w, _ in failures_of("steps: [{say: hi}]", outcome_with("Hi.", errors=waits))] == ["timeout", "max_call"]


def barge_in_without_clear(bot_voice: list[tuple[float, float]]):
    """A caller who speaks from 2 s to 3.5 s over a bot on a carrier without clear."""
    stop = audible_stop(bot_voice, 2000.0, 3500.0)
    barge = {"turn": 0, "caller_speech_start_ms": 2000.0, "clear_ms": None, "latency_ms": None, "frames_after_clear": 0,
             "audible_stop_latency_ms": None if stop is None else stop - 2000.0}
    rep = markless_report(bot_voice, duration_ms=8000.0, ended_by="bot")
    rep["barge_ins"] = [barge]
    rep["turns"] = [{"caller_speech_start_ms": 2000.0, "caller_speech_end_ms": 3500.0}]
    return build_outcome(rep, [(2000.0, 3500.0)], GREETING, has_marks=False, has_clear=False)


def test_without_a_clear_a_barge_in_is_judged_by_when_the_caller_heard_the_bot_go_quiet():
    body = "expect: {barge_in: {clear_within_ms: 300}}\nsteps: [{say: hi}]"
    # Talking as the caller begins, a 30 ms gap between two words, then quiet 450 ms in.
    outcome = barge_in_without_clear([(61, 2200), (2230, 2450), (4000, 5000)])
    failures, _ = check(parse_case_text(body), outcome)
    assert [(f.what, f.heard) for f in failures] == [("barge_in", "barge-in at 2.00 s: quiet after 450 ms")]
    assert "audible stop" in failures[0].expected and "no clear" in failures[0].expected
    assert failures_of(body.replace("300", "500"), outcome) == []
    # The budget a recording writes is the audible stop's, under the same key.
    assert baseline(outcome)["barge_in"] == {"clear_within_ms": 1000}
    # A caller who began in a pause between sentences heard the bot quiet already, unless its
    # voice came back while they spoke (700 ms in, for 200 ms).
    assert barge_in_without_clear([(61, 1900), (4000, 5000)]).barge_ins[0]["quiet_after_ms"] == 0.0
    assert barge_in_without_clear([(61, 1900), (2700, 2900)]).barge_ins[0]["quiet_after_ms"] == 900.0


def test_with_a_clear_a_barge_in_is_judged_by_the_clear():
    body = "expect: {barge_in: {clear_within_ms: 500}}\nsteps: [{say: hi}]"
    barge = {"turn": 0, "caller_speech_start_ms": 2000.0, "clear_ms": None, "latency_ms": None, "frames_after_clear": 0,
             "audible_stop_latency_ms": 100.0}
    assert failures_of(body, outcome_with("Hi.", barge_ins=[barge])) == [
        ("barge_in", "barge-in at 2.00 s: the bot sent no clear")]


def test_meanings_go_to_the_judge_or_are_skipped():
    case = parse_case_text("steps: [{say: hi, expect: {says: {meaning: 'gives the opening hours'}}}]")
    outcome = outcome_with("We're open from seven.")
    assert pending_meanings(case, outcome) == [('step 1 (say "hi")', "gives the opening hours", "We're open from seven.")]
    failures, skips = check(case, outcome, {})
    assert failures == [] and [s.what for s in skips] == ['says meaning "gives the opening hours"']
    key = pending_meanings(case, outcome)[0]
    failures, _ = check(case, outcome, {key: (False, "it gives the address")})
    assert failures[0].what == "says" and failures[0].diff == "judge: it gives the address"
    assert check(case, outcome, {key: (True, "")}) == ([], [])


def test_judge_verdicts_are_read_from_json_or_a_plain_yes():
    assert parse_verdict('Sure: {"holds": false, "reason": "no hours"}') == (False, "no hours")
    assert parse_verdict("Yes.")[0] is True
    with pytest.raises(JudgeError):
        parse_verdict("maybe")


def test_a_recorded_baseline_catches_a_changed_reply_word_by_word(tmp_path):
    outcome = outcome_with("We're open Tuesday to Sunday.", latency=400.0, tools=[("hangup", {})])
    expect = baseline(outcome)
    assert expect["turns"] == [{"heard": "We're open Tuesday to Sunday.", "within_ms": 900}]
    assert expect["hangup"] is True and "transfer" not in expect
    import yaml

    (tmp_path / "call.jsonl").write_text("")
    path = case_file(tmp_path, yaml.safe_dump({"call": "call.jsonl", "recorded": {}, "expect": expect}))
    case = parse_case(path)
    assert check(case, outcome) == ([], [])
    changed = outcome_with("We're open Monday to Friday.", latency=400.0, tools=[("hangup", {})])
    failures, _ = check(case, changed)
    assert [(f.where, f.what) for f in failures] == [("turn 1", "heard")]
    assert failures[0].diff == "We're open [-Tuesday-] {+Monday+} to [-Sunday.-] {+Friday.+}"


def test_budgets_have_a_margin():
    assert latency_budget(400) == 900 and latency_budget(2000) == 3000 and latency_budget(None) is None


def test_word_diff_ignores_case_and_punctuation():
    assert word_diff("we're OPEN, daily", "We're open daily") == "we're OPEN, daily"


def test_junit_has_one_testcase_per_case_with_expected_and_heard(tmp_path):
    ok = CaseResult(parse_case(case_file(tmp_path, "steps: [{say: hi}]", "ok.yaml")), wall_s=1.5)
    bad_case = parse_case(case_file(tmp_path, "steps: [{say: hi, expect: {says: open}}]", "bad.yaml"))
    bad = CaseResult(bad_case, wall_s=2.0)
    bad.failures, _ = check(bad_case, outcome_with("Sorry?"))
    broken = CaseResult(parse_case(case_file(tmp_path, "steps: [{say: hi}]", "broken.yaml")), error="connect_failed")
    root = ET.fromstring(junit_xml([ok, bad, broken]))
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["ok"].find("failure") is None
    failure = cases["bad"].find("failure")
    assert 'expected "open"' in failure.get("message") and 'heard "Sorry?"' in failure.get("message")
    assert 'step 1 (say "hi"): says' in failure.text
    assert cases["broken"].find("error").get("message") == "connect_failed"


def test_the_readmes_example_case_is_a_valid_case(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Writing a case", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    case = parse_case(case_file(tmp_path, example))
    assert case.expect.hangup is True and [n for n, _, _ in case.steps] == [1, 2, 3]
    assert all(e is not None for _, _, e in case.steps)


def test_on_a_slow_machine_the_caller_waits_longer_for_the_bots_silence(tmp_path):
    from ivr.harness.plan import After, CallPlan, Dtmf, Say
    from ivr.harness.suite import patient_caller

    case = parse_case(case_file(tmp_path, "expect: {hangup: true}\nsteps: [{dtmf: '1'}]"))
    plan = CallPlan("c", "script", "x", [Say(b"", after=After("bot_speaking", 2.0)), Dtmf("1", After("bot_silent", 0.6, 20))])
    patient_caller(plan, case, 2.0)
    assert plan.steps[0].after == After("bot_speaking", 2.0)  # an interruption keeps its moment
    assert plan.steps[1].after == After("bot_silent", 1.2, 40)
    # The bot is expected to end the call: the caller leaves it time to.
    assert plan.steps[-1].after == After("bot_silent", 6.0, 30.0)
    quiet = CallPlan("c", "script", "x", [Dtmf("1")])
    patient_caller(quiet, parse_case(case_file(tmp_path, "steps: [{dtmf: '1'}]")), 1.0)
    assert quiet.steps[-1].after == After("bot_silent", 1.0, 10.0)
