"""Plain mistakes get plain answers: `ivr` as a subprocess, as a newcomer runs it.

Each mistake prints one or two lines naming the file or setting and the fix, and exits non-zero;
a traceback only with --debug or IVR_LOG_LEVEL=debug.
"""

import os
import socket
import subprocess
import sys

import pytest

from live_server import free_port


def ivr(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("IVR_", "TWILIO_", "DEEPGRAM_", "OPENAI_", "ELEVENLABS_"))}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "ivr", *args], env=clean, cwd=cwd, capture_output=True, text=True, timeout=120)


def plain(out: subprocess.CompletedProcess) -> list[str]:
    """The error lines, checked to be a plain answer: non-zero, one or two lines, no traceback."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr and 1 <= len(lines) <= 2, out.stderr
    return lines


@pytest.fixture
def flows(tmp_path):
    (tmp_path / "broken.yaml").write_text("greeting: [unclosed\n")
    (tmp_path / "typo.yaml").write_text("greeting: hi\nstart: main\nnodes:\n  main:\n    say: hi\n    hangup: true\n    gotto: x\n")
    return tmp_path


def test_a_flow_that_is_not_there(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    first, fix = plain(ivr("serve", "--port", str(free_port()), env={"IVR_FLOW": str(missing)}))
    assert first.startswith("ivr serve: IVR_FLOW: ") and str(missing) in first and "No such file" in first
    assert "IVR_FLOW" in fix


def test_a_flow_with_broken_yaml(flows):
    first, fix = plain(ivr("serve", "--port", str(free_port()), env={"IVR_FLOW": str(flows / "broken.yaml")}))
    assert "broken.yaml" in first and "line 2, column 1" in first
    assert "correct the file" in fix


def test_a_flow_with_an_unknown_key(flows):
    first, _ = plain(ivr("serve", "--port", str(free_port()), env={"IVR_FLOW": str(flows / "typo.yaml")}))
    assert "typo.yaml" in first and "nodes.main: unknown key 'gotto'" in first


def test_the_traceback_is_there_when_asked_for(flows):
    env = {"IVR_FLOW": str(flows / "typo.yaml")}
    for out in (ivr("serve", "--debug", env=env), ivr("--debug", "serve", env=env), ivr("serve", env={**env, "IVR_LOG_LEVEL": "debug"})):
        assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr, out.stderr[-500:]


def test_a_bad_setting_names_its_variable():
    first, *_ = plain(ivr("serve", env={"IVR_MAX_CALLS": "many"}))
    assert first == "ivr serve: IVR_MAX_CALLS: 'many' is not a whole number"


def test_stt_on_a_missing_file(tmp_path):
    first, _ = plain(ivr("stt", "no-such-recording.wav", cwd=tmp_path))
    assert first == "ivr stt: cannot open no-such-recording.wav: no such file or directory"


def test_call_when_twilio_cannot_be_reached(tmp_path):
    env = {"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "x" * 32,
           "IVR_TWILIO_API_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
           "IVR_OUTBOUND_DIR": str(tmp_path)}
    first, fix = plain(ivr("call", "+15550100123", "--from", "+15550100999", "--url", "https://bot.example.com", env=env))
    assert first.startswith("ivr call: Twilio's API did not answer: ") and "127.0.0.1" in first
    assert "network" in fix


def test_a_port_in_use_says_so_before_anything_else():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        out = ivr("serve", "--port", str(port))
    first, fix = plain(out)
    assert out.stdout == ""  # no web phone banner for a server that never starts
    assert first == f"ivr serve: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "--port" in fix


def test_serve_help_lists_what_a_newcomer_changes_first():
    out = ivr("serve", "--help")
    assert out.returncode == 0
    for var in ("IVR_FLOW", "IVR_STT", "IVR_TTS", "IVR_BRAIN"):
        assert f"\n  {var} " in out.stdout, out.stdout
    assert "(default: 8080)" in out.stdout and "(default: 127.0.0.1)" in out.stdout
    assert "the bakery example" in out.stdout  # what an empty IVR_FLOW means
