"""`ivr test` from the outside: the command run as a subprocess against the bot on the embedded
engines, as CI and a user run it. The example flow's own cases (calls/) run here too, so the
project's CI runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from replay_helpers import run as replay_script
from replay_helpers import script

pytest.importorskip("faster_whisper")
pytest.importorskip("piper")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_FLOW = REPO / "ivr" / "flows" / "example.yaml"
OLD_HOURS = "Tuesday to Sunday, from seven in the morning until three in the afternoon"
NEW_HOURS = "Monday to Friday, from eight in the morning until four in the afternoon"
#: Calls run in real time; a busy machine gets twice the latency budgets.
MARGIN = "2"


def ivr_test(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    for key in [k for k, v in full_env.items() if v is None]:
        del full_env[key]
    return subprocess.run([sys.executable, "-m", "ivr", "test", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def changed_flow(tmp_path: Path) -> Path:
    text = EXAMPLE_FLOW.read_text()
    assert OLD_HOURS in text
    path = tmp_path / "changed.yaml"
    path.write_text(text.replace(OLD_HOURS, NEW_HOURS))
    return path


@pytest.fixture(scope="module")
def bots(tmp_path_factory):
    """Two running bots: the example flow (capturing its calls) and the same with new hours."""
    from ivr.harness.suite import BotServer

    tmp = tmp_path_factory.mktemp("bots")
    captures = tmp / "captures"
    example = BotServer(str(EXAMPLE_FLOW), tmp, {"IVR_CAPTURE_DIR": str(captures)})
    (tmp / "b").mkdir()
    changed = BotServer(str(changed_flow(tmp)), tmp / "b")
    try:
        example.start()
        changed.start()
        yield example, changed, captures
    finally:
        example.stop()
        changed.stop()


def test_the_example_flows_cases_pass_with_junit_and_reports(tmp_path):
    """CI's run of the project's own cases (calls/), the bot started by `ivr test` itself."""
    junit, reports = tmp_path / "junit.xml", tmp_path / "reports"
    done = ivr_test("--jobs", "3", "--margin", MARGIN, "--junit", str(junit), "--report", str(reports))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed, 0 failed" in done.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert {c.get("name") for c in suite.findall("testcase")} == {"hours", "keys", "person"}
    index = (reports / "index.html").read_text()
    for name in ("hours", "keys", "person"):
        assert f'href="{name}/timeline.html"' in index
        for f in ("report.json", "call.wav", "timeline.html", "case.json"):
            assert (reports / name / f).is_file()


KEY_CASE = """
    name: hours-by-key
    steps:
      - dtmf: "1"
        after: bot_speaking 3
        expect:
          says: "we're open Tuesday to Sunday"
          within_ms: 2000
"""


def test_a_flow_changed_behind_a_cases_back_fails_with_what_was_expected_and_heard(tmp_path):
    case = tmp_path / "hours.yaml"
    case.write_text(textwrap.dedent(KEY_CASE))
    junit = tmp_path / "junit.xml"
    done = ivr_test(str(case), "--flow", str(changed_flow(tmp_path)), "--margin", MARGIN, "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "FAILED hours-by-key" in out
    assert "step 1 (dtmf \"1\"): says" in out
    assert "expected: \"we're open Tuesday to Sunday\"" in out
    assert "heard:    \"We're open Monday to Friday, from eight in the morning" in out
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert "we're open Tuesday to Sunday" in failure.get("message") and "Monday to Friday" in failure.get("message")


def test_a_captured_call_becomes_a_case_that_catches_a_change_and_update_accepts_it(bots, tmp_path):
    example, changed, captures = bots
    call = script(tmp_path, """
        steps:
          - dtmf: "1"
            after: bot_speaking 3
          - hangup:
            after: bot_silent 3
    """)
    replayed = replay_script(example.url, call, tmp_path / "replay", speed=1.0)
    sid = replayed.report["call"]["call_sid"]
    capture = next(captures.glob(f"*{sid}*.jsonl"))

    cases = tmp_path / "cases"
    done = ivr_test("--record", str(capture), "--into", str(cases), "--url", example.url)
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = cases / (capture.stem + ".yaml")
    doc = yaml.safe_load(recorded.read_text())
    assert doc["call"] == capture.name and (cases / capture.name).is_file()
    (turn,) = doc["expect"]["turns"]
    assert turn["heard"].startswith("We're open Tuesday to Sunday") and turn["within_ms"] > 0
    assert turn["caller"] == "(keys 1)"
    # The greeting was cut by the key: its baseline is the part heard whole.
    assert doc["expect"]["greeting"]["says"].startswith("Thanks for calling Sunrise Bakery.")
    assert doc["expect"]["hangup"] is False

    assert ivr_test(str(cases), "--url", example.url, "--margin", MARGIN).returncode == 0
    done = ivr_test(str(cases), "--url", changed.url, "--margin", MARGIN)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "turn 1 (keys 1): heard" in done.stdout
    assert "[-Tuesday-] {+Monday+}" in done.stdout

    done = ivr_test(str(cases), "--url", changed.url, "--margin", MARGIN, "--update")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UPDATED" in done.stdout
    assert yaml.safe_load(recorded.read_text())["expect"]["turns"][0]["heard"].startswith("We're open Monday to Friday")
    assert ivr_test(str(cases), "--url", changed.url, "--margin", MARGIN).returncode == 0


def test_meanings_are_judged_by_a_model_when_a_key_is_set_and_skipped_when_not(bots, tmp_path):
    from fakes.openai_api import FakeOpenAI, Reply
    from live_server import serve

    example, _, _ = bots

    def judge(body: dict) -> Reply:
        question = body["messages"][-1]["content"]
        meaning, heard = question.split("\n", 1)
        holds = ("hours" in meaning and "open" in heard.lower()) or ("address" in meaning and "street" in heard.lower())
        return Reply('{"holds": %s, "reason": "the reply %s"}' % ("true" if holds else "false", "does" if holds else "does not"))

    (tmp_path / "hours.yaml").write_text(textwrap.dedent(KEY_CASE).replace(
        'says: "we\'re open Tuesday to Sunday"', "says: {meaning: the opening hours}"))
    (tmp_path / "address.yaml").write_text(textwrap.dedent(KEY_CASE).replace(
        'says: "we\'re open Tuesday to Sunday"', "says: {meaning: the bakery's address}").replace("hours-by-key", "address"))

    done = ivr_test(str(tmp_path), "--url", example.url, "--jobs", "2", "--margin", MARGIN, env={"OPENAI_API_KEY": None})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 check(s) skipped" in done.stdout and "no judge model" in done.stdout

    fake = FakeOpenAI("sk-judge", responder=judge)
    with serve(fake.app) as base:
        done = ivr_test(str(tmp_path), "--url", example.url, "--jobs", "2", "--margin", MARGIN,
                        env={"OPENAI_API_KEY": "sk-judge", "OPENAI_BASE_URL": base + "/v1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED address" in done.stdout and "FAILED hours-by-key" not in done.stdout
    assert "judge: the reply does not" in done.stdout
    assert len(fake.requests) == 2 and all(r["temperature"] == 0 for r in fake.requests)


@pytest.mark.parametrize("args, message", [
    (["nowhere/"], "no such file or folder"),
    (["--record", "x.jsonl"], "--record needs --into"),
    (["--flow", "missing.yaml"], "no such file"),
    (["--jobs", "0"], "above 0"),
    (["--carrier", "audiosocket", "--url", "ws://127.0.0.1:8080/media"], "AudioSocket is TCP"),
    (["--url", "tcp://127.0.0.1:9092"], "add --carrier audiosocket"),
    (["--http-url", "http://127.0.0.1:8080"], "goes with --carrier audiosocket"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    done = ivr_test(*args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr


def test_a_bad_case_exits_2_before_any_call(tmp_path):
    (tmp_path / "bad.yaml").write_text("steps: [{say: hi, expect: {sayz: hello}}]")
    done = ivr_test(str(tmp_path))
    assert done.returncode == 2 and "unknown sayz" in done.stderr


def test_the_example_flows_cases_pass_over_another_carriers_protocol(tmp_path):
    """`ivr test --carrier`: the same cases, the harness playing Telnyx on the bot's /media/telnyx."""
    junit = tmp_path / "junit.xml"
    done = ivr_test("--carrier", "telnyx", "--jobs", "3", "--margin", MARGIN, "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/media/telnyx" in done.stdout and "3 passed, 0 failed" in done.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert {c.get("name") for c in suite.findall("testcase")} == {"hours", "keys", "person"}


def test_the_example_flows_cases_pass_over_audiosocket(tmp_path):
    """No marks and no clear: what was heard is the bot's own reckoning, and a barge-in is judged
    by when the caller heard it go quiet. The bot listens on an AudioSocket port of its own."""
    junit = tmp_path / "junit.xml"
    done = ivr_test("--carrier", "audiosocket", "--jobs", "3", "--margin", MARGIN, "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tcp://127.0.0.1:" in done.stdout and "3 passed, 0 failed" in done.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert {c.get("name") for c in suite.findall("testcase")} == {"hours", "keys", "person"}


def test_a_case_the_bot_does_not_meet_fails_over_audiosocket_with_what_was_heard(tmp_path):
    """Against a running bot: its AudioSocket port as --url, its HTTP side for the words."""
    from ivr.harness.suite import BotServer

    case = tmp_path / "hours.yaml"
    case.write_text(textwrap.dedent(KEY_CASE).replace("Tuesday to Sunday", "Monday to Friday"))
    bot = BotServer(str(EXAMPLE_FLOW), tmp_path, carrier="audiosocket")
    bot.start()
    try:
        done = ivr_test(str(case), "--carrier", "audiosocket", "--url", bot.url, "--http-url", bot.http_url,
                        "--margin", MARGIN)
    finally:
        bot.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "FAILED hours-by-key" in out and 'step 1 (dtmf "1"): says' in out
    assert "expected: \"we're open Monday to Friday\"" in out
    assert "heard:    \"We're open Tuesday to Sunday, from seven in the morning" in out
