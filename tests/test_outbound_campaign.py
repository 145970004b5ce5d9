"""`ivr call` and campaign mode against the fake Twilio REST API on loopback (issue 11).

The campaign's rate is measured on the fake's side from the times the create requests arrived;
nothing here waits on a clock: the fake signals each call's end, the runner polls the fake.
"""

import asyncio

import pytest

from fakes.twilio_api import Callee, FakeTwilioApi
from ivr.telephony.twilio_rest import TwilioRest
from ivr.cli import main
from ivr.config import Settings
from ivr.outbound.campaign import Campaign, read_targets
from ivr.outbound.place import Placer
from ivr.outbound.store import CallStore
from ivr.server import create_app
from ivr.session import ListeningHandler
from live_server import serve

ACCOUNT, TOKEN = "AC" + "5" * 32, "6" * 32
FROM = "+15550001111"
RATE, MAX_CONCURRENT, CALLS = 40.0, 8, 200

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture()
def stack(tmp_path, monkeypatch):
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    settings = Settings.from_env({"TWILIO_AUTH_TOKEN": TOKEN, "IVR_OUTBOUND_DIR": str(tmp_path)})
    app = create_app(settings, handler_factory=ListeningHandler)
    with serve(api.app) as api_url, serve(app) as base:
        for k, v in {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "IVR_TWILIO_API_URL": api_url,
                     "IVR_OUTBOUND_DIR": str(tmp_path), "IVR_PUBLIC_URL": base, "IVR_CALLER_ID": FROM}.items():
            monkeypatch.setenv(k, v)
        yield base, api_url, api, CallStore(tmp_path)


def test_ivr_call_places_one_call_and_ivr_calls_shows_its_outcome(stack, capsys):
    base, _, api, store = stack
    api.default_callee = Callee(answer="answered", answered_by="machine_end_beep")
    assert main(["call", "+15550003333", "--param", "name=Sam", "--param", "order_number=4572"]) == 0
    out = capsys.readouterr().out
    sid = out.split()[1]
    api.wait_done(sid)
    form = api.created[-1]
    assert form["To"] == "+15550003333" and form["From"] == FROM and form["AsyncAmd"] == "true"
    assert '<Parameter name="name" value="Sam" />' in form["Twiml"]
    assert main(["calls"]) == 0
    listing = capsys.readouterr().out
    assert "voicemail" in listing and sid in listing and "+15550003333" not in listing  # masked
    assert main(["calls", "--show-numbers"]) == 0
    assert "+15550003333" in capsys.readouterr().out


def test_ivr_call_refuses_bad_input_without_calling(stack, capsys):
    _, _, api, _ = stack
    assert main(["call", "5550003333"]) == 2
    assert main(["call", "+15550003333", "--param", "From=+1999"]) == 2
    assert main(["call"]) == 2
    assert api.created == []


async def run(campaign, targets):
    try:
        return await campaign.run(targets)
    finally:
        await campaign.placer.aclose()


def write_csv(path, n):
    lines = ["to,name"] + [f"+1555{7000000 + i},Person {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_campaign_keeps_its_rate_and_concurrency_and_resumes_after_an_interruption(stack, tmp_path):
    base, api_url, api, store = stack
    api.default_callee = Callee(answer="answered", hold_s=0.1)
    # A few numbers that do not answer, for the summary.
    api.callees["+15557000003"] = Callee(answer="busy")
    api.callees["+15557000004"] = Callee(answer="no-answer")
    targets = read_targets(write_csv(tmp_path / "numbers.csv", CALLS))
    assert len(targets) == CALLS and targets[0][1] == {"name": "Person 0"}

    def campaign():
        placer = Placer(TwilioRest.from_env(), base, store)
        return Campaign("reminders", placer, store, from_=FROM, rate=RATE, max_concurrent=MAX_CONCURRENT, poll_s=0.1)

    first = campaign()

    def interrupt_half_way(progress):
        if progress.placed == CALLS // 2:
            first.stop()

    first.on_progress = interrupt_half_way
    p1 = asyncio.run(run(first, targets))
    assert p1.placed == CALLS // 2
    assert len(api.created) == CALLS // 2
    assert api.max_active <= MAX_CONCURRENT
    for sid in list(api.calls):  # the stopped run's calls go on; let them end
        api.wait_done(sid)
    api.max_active = 0

    second = campaign()
    p2 = asyncio.run(run(second, targets))
    assert p2.skipped == CALLS // 2 and p2.placed == CALLS // 2

    numbers = [c["To"] for c in api.created]
    assert len(numbers) == CALLS and len(set(numbers)) == CALLS  # every number once, none twice
    assert api.max_active <= MAX_CONCURRENT
    # Rate, measured where Twilio would see it: the create requests' arrival times.
    times = [c["t"] for c in api.created[CALLS // 2:]]
    measured = (len(times) - 1) / (times[-1] - times[0])
    print(f"campaign: {CALLS // 2} calls at {measured:.2f} calls/s (limit {RATE:g}), max {api.max_active} at once")
    assert measured <= RATE * 1.05
    # The runner's own spacing never undercuts 1/rate between two placements.
    gaps = [b - a for a, b in zip(p2.place_times, p2.place_times[1:])]
    assert min(gaps) >= 1 / RATE - 1e-3
    assert p2.outcomes["completed"] + p1.outcomes["completed"] + p1.outcomes["left-running"] >= CALLS - 2
    assert (p1.outcomes + p2.outcomes)["busy"] <= 1

    # A third run finds nothing left to call.
    p3 = asyncio.run(run(campaign(), targets))
    assert p3.placed == 0 and p3.skipped == CALLS and len(api.created) == CALLS
