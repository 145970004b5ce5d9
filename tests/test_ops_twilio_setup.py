"""`ivr twilio setup` against a fake Twilio REST API on loopback, through the real twilio client."""

import subprocess
import sys
from xml.etree import ElementTree

import pytest

from fakes.twilio_account import FakeTwilioAccount
from ivr.cli import main
from live_server import serve

ACCOUNT, TOKEN = "AC" + "3" * 32, "4" * 32
NUMBER = "+15550100777"
URL = "https://bot.example.com"


@pytest.fixture
def account(monkeypatch):
    fake = FakeTwilioAccount(ACCOUNT, TOKEN)
    with serve(fake.app) as api_url:
        for var in ("TWILIO_API_KEY", "TWILIO_API_SECRET"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
        monkeypatch.setenv("IVR_TWILIO_API_URL", api_url)
        yield fake


def test_points_the_numbers_webhook_and_status_callback_at_the_server(account, capsys):
    pn = account.add_number(NUMBER)
    account.add_number("+15550100888")
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL + "/"]) == 0
    assert pn["voice_url"] == f"{URL}/twiml/voice" and pn["voice_method"] == "POST"
    assert pn["status_callback"] == f"{URL}/twiml/status" and pn["status_callback_method"] == "POST"
    assert account.numbers["PN" + format(2, "032x")]["voice_url"].startswith("https://demo.twilio.com")
    out = capsys.readouterr().out
    assert f"{NUMBER} ({pn['sid']}): voice webhook POST {URL}/twiml/voice" in out
    assert TOKEN not in out


def test_a_twiml_app_on_the_number_is_removed_and_a_trunk_needs_consent(account, capsys):
    pn = account.add_number(NUMBER, voice_application_sid="AP" + "5" * 32, trunk_sid="TK" + "6" * 32)
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL]) == 1
    assert "Elastic SIP Trunk" in capsys.readouterr().err
    assert pn["voice_url"].startswith("https://demo.twilio.com")  # nothing changed
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL, "--detach-trunk"]) == 0
    assert pn["trunk_sid"] is None and pn["voice_application_sid"] is None
    assert pn["voice_url"] == f"{URL}/twiml/voice"


def test_dry_run_changes_nothing(account, capsys):
    pn = account.add_number(NUMBER)
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL, "--dry-run"]) == 0
    assert "would get" in capsys.readouterr().out
    assert pn["voice_url"].startswith("https://demo.twilio.com")
    assert [m for m, _, _ in account.requests] == ["GET"]


def test_sip_domain_updated_or_created(account, capsys):
    existing = account.add_domain("acme.sip.twilio.com")
    assert main(["twilio", "setup", "--sip-domain", "acme.sip.twilio.com", "--url", URL]) == 0
    assert existing["voice_url"] == f"{URL}/twiml/voice"
    assert existing["voice_status_callback_url"] == f"{URL}/twiml/status"
    assert main(["twilio", "setup", "--sip-domain", "new.sip.twilio.com", "--url", URL]) == 1
    assert "--create-domain" in capsys.readouterr().err
    assert main(["twilio", "setup", "--sip-domain", "new.sip.twilio.com", "--url", URL, "--create-domain"]) == 0
    created = next(d for d in account.domains.values() if d["domain_name"] == "new.sip.twilio.com")
    assert created["voice_url"] == f"{URL}/twiml/voice" and created["voice_method"] == "POST"
    assert "created" in capsys.readouterr().out


def test_unknown_number_wrong_credentials_and_bad_arguments(account, monkeypatch, capsys):
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL]) == 1
    assert "not a phone number of this account" in capsys.readouterr().err
    account.add_number(NUMBER)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong")
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "wrong" not in err
    for argv in (["--number", NUMBER, "--url", "http://bot.example.com"], ["--number", "5550100", "--url", URL],
                 ["--sip-domain", "pbx.example.com", "--url", URL], ["--url", URL]):
        assert main(["twilio", "setup", *argv]) == 2
    monkeypatch.delenv("TWILIO_ACCOUNT_SID")
    assert main(["twilio", "setup", "--number", NUMBER, "--url", URL]) == 1
    assert "TWILIO_ACCOUNT_SID" in capsys.readouterr().err


def test_twiml_bin_is_the_answer_document_with_twilio_templates():
    out = subprocess.run(
        [sys.executable, "-m", "ivr", "twilio", "setup", "--url", URL, "--twiml-bin"],
        capture_output=True, text=True, check=True,
    )
    root = ElementTree.fromstring(out.stdout)
    stream = root.find("Connect/Stream")
    assert stream.get("url") == "wss://bot.example.com/media"
    assert stream.get("statusCallback") == f"{URL}/twiml/status"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"From": "{{From}}", "To": "{{To}}", "CallSid": "{{CallSid}}"}
    assert root.find("Redirect").text == f"{URL}/twiml/fallback"
    assert "TwiML Bins" in out.stderr
