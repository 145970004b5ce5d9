"""Several `ivr serve` processes behind one public URL, sharing one Redis (ivr.fleet).

Twilio's requests for one call are spread over the pods on purpose: the voice webhook on A, the
Media Stream on B, /twiml/fallback back on A, the AMD callback on C. Every pod has the same
TWILIO_AUTH_TOKEN and IVR_PUBLIC_URL, so each request is signed once, for the public URL, and
must validate on whichever pod it reaches. Then: POST /calls on two pods keeps the global rate;
a campaign run on two "pods" splits its numbers and keeps its rate; losing Redis loses no call;
a pod drains alone and hands the others nothing it should not.

Nothing waits on a clock: each step waits for the servers' log lines, the calls' end, or Redis.
"""

import asyncio
import signal
import xml.etree.ElementTree as ET

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from twilio.request_validator import RequestValidator

from fakes.twilio_api import Callee, FakeTwilioApi
from ivr.telephony.twilio_rest import TwilioRest
from ivr.fleet.redis_state import RedisState
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import After, CallPlan, Dtmf, Hangup, Wait
from ivr.outbound.campaign import Campaign
from ivr.outbound.place import Placer
from ivr.outbound.store import CallStore
from live_server import free_port, serve
from ops_server import ServeProcess
from redis_server import BINARY, RedisServer

ACCOUNT, TOKEN = "AC" + "2" * 32, "3" * 32
API_TOKEN, WEB_TOKEN = "a" * 32, "w" * 32
CALLER, BAKERY, STAFF = "+15550100123", "+15550100999", "+15550100123"
OUTBOUND_RATE = 5.0

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.skipif(BINARY is None, reason="redis-server is not installed (apt-get install redis-server)"),
]


class Fleet:
    def __init__(self, redis_server, api, api_url, tmp) -> None:
        self.redis_server = redis_server
        self.api = api
        # The public URL is A's address: the load balancer, as far as Twilio (and the fake
        # Twilio API's callbacks) can tell. Requests the test sends elsewhere are signed for it.
        port = free_port()
        self.public = f"http://127.0.0.1:{port}"
        common = {
            "IVR_REDIS_URL": redis_server.url, "TWILIO_AUTH_TOKEN": TOKEN,
            "IVR_PUBLIC_URL": self.public, "IVR_TWILIO_API_URL": api_url, "IVR_API_TOKEN": API_TOKEN,
            "IVR_WEBPHONE_TOKEN": WEB_TOKEN, "IVR_CALLER_ID": "+15550001111", "IVR_OUTBOUND_RATE": str(OUTBOUND_RATE),
            "IVR_DRAIN_SECONDS": "3", "IVR_MAX_CALLS": "4",
        }
        self.pods = {}
        for name in "ABC":
            env = {**common, "IVR_CAPTURE_DIR": str(tmp / f"capture-{name}"), "IVR_OUTBOUND_DIR": str(tmp / f"outbound-{name}")}
            if name != "B":
                # B has no REST credentials: a transfer there ends the stream and waits for
                # Twilio's /twiml/fallback request, which may reach any pod.
                env["TWILIO_ACCOUNT_SID"] = ACCOUNT
            pod = ServeProcess(env)
            if name == "A":
                pod.port, pod.base, pod.media_url = port, self.public, f"ws://127.0.0.1:{port}/media"
                pod.env["IVR_PORT"] = str(port)
            self.pods[name] = pod
        self.redis = aioredis.from_url(redis_server.url, decode_responses=True)

    async def post(self, pod: str, path: str, form: dict) -> httpx.Response:
        """A signed Twilio webhook, sent to `pod` though Twilio addressed the public URL."""
        signature = RequestValidator(TOKEN).compute_signature(self.public + path, form)
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.post(self.pods[pod].base + path, data=form, headers={"X-Twilio-Signature": signature})

    def stream(self, pod: str, call_sid: str, params: dict, plan: CallPlan) -> TwilioEmulator:
        """Twilio's Media Stream to `pod`, signed for the public stream URL."""
        options = ReplayOptions(url=self.pods[pod].media_url, auth_token=TOKEN, sign_url=self.public.replace("http", "ws", 1) + "/media",
                                account_sid=ACCOUNT, call_sid=call_sid, params=params, max_call_s=90, speed=1.0)
        return TwilioEmulator(plan, options)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory):
    redis_server = RedisServer()
    redis_server.start()
    api = FakeTwilioApi(ACCOUNT, TOKEN)
    try:
        with serve(api.app) as api_url:
            f = Fleet(redis_server, api, api_url, tmp_path_factory.mktemp("fleet"))
            try:
                await asyncio.gather(*(p.start() for p in f.pods.values()))
                yield f
            finally:
                await asyncio.gather(*(p.stop() for p in f.pods.values()))
                await f.redis.aclose()
    finally:
        redis_server.close()


def stream_of(doc: str) -> tuple[str, dict]:
    stream = ET.fromstring(doc).find("./Connect/Stream")
    assert stream is not None, doc
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def sid(n: int) -> str:
    return "CA" + f"{n:032x}"


def logged(text: str, call_sid: str | None = None):
    return lambda r: text in r.get("msg", "") and (call_sid is None or r.get("call_sid") == call_sid or call_sid in r.get("msg", ""))


async def test_a_caller_who_asks_for_a_person_is_transferred_though_each_request_reached_another_pod(fleet):
    call = sid(1)
    # The webhook on A: a line reserved for the call, on A.
    voice = await fleet.post("A", "/twiml/voice", {"CallSid": call, "From": CALLER, "To": BAKERY, "AccountSid": ACCOUNT})
    assert voice.status_code == 200 and "<Connect>" in voice.text
    assert await fleet.redis.exists(f"ivr:line:{call}") == 1
    url, params = stream_of(voice.text)
    assert url == fleet.public.replace("http", "ws", 1) + "/media"

    # The stream on B: the caller presses 0 for a person; without REST credentials the bot ends
    # the stream and leaves the transfer for /twiml/fallback.
    plan = CallPlan("operator", "script", "asks for a person", [
        Dtmf("0", after=After("bot_silent", 0.5, 40.0)),
        Hangup(After("bot_silent", 15.0, 40.0)),
    ])
    record = await fleet.stream("B", call, params, plan).run()
    assert record.connected and record.ended_by == "bot" and not record.errors, record.errors
    await fleet.pods["B"].wait_for(logged("call started", call), 10)
    await fleet.pods["B"].wait_for(logged("transferring the call", call), 10)
    # Counted once: B claimed A's reservation when the stream came.
    assert await fleet.redis.exists(f"ivr:line:{call}") == 0
    for key in await fleet.redis.keys("ivr:lines:*"):
        assert await fleet.redis.zscore(key, call) is None

    # Twilio's fallback request, on A: the transfer B planned, not the apology.
    fallback = await fleet.post("A", "/twiml/fallback", {"CallSid": call, "AccountSid": ACCOUNT})
    assert fallback.status_code == 200
    assert "<Dial" in fallback.text and f"<Number>{STAFF}</Number>" in fallback.text, fallback.text
    again = await fleet.post("C", "/twiml/fallback", {"CallSid": call, "AccountSid": ACCOUNT})
    assert "<Dial" not in again.text  # taken once

    # A's call viewer lists the call B captured, and says where its file is.
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {WEB_TOKEN}"}) as http:
        on_a = (await http.get(fleet.pods["A"].base + "/calls")).text
        on_b = (await http.get(fleet.pods["B"].base + "/calls")).text
    assert call in on_a and "not on this pod&#x27;s storage" in on_a, on_a
    assert call in on_b and f'href="/calls/' in on_b


async def test_an_amd_verdict_posted_to_one_pod_reaches_the_call_on_another(fleet):
    call = sid(2)
    params = {"From": "+15550001111", "To": "+15550004444", "IvrDirection": "outbound", "IvrCallId": "ob-1",
              "IvrAmd": "1", "name": "Sam", "order_number": "4572"}
    # A machine: it listens to the bot's voicemail message, which ends the call.
    plan = CallPlan("machine", "script", "answering machine", [Hangup(After("bot_silent", 3.0, 60.0))])
    call_task = asyncio.create_task(fleet.stream("B", call, params, plan).run())
    await fleet.pods["B"].wait_for(logged("call started", call), 30)
    amd = await fleet.post("C", "/outbound/amd", {"CallSid": call, "AccountSid": ACCOUNT, "AnsweredBy": "machine_end_beep",
                                                    "MachineDetectionDuration": "4200"})
    assert amd.status_code == 204
    await fleet.pods["B"].wait_for(logged(f"call {call} answered by machine_end_beep"), 30)
    record = await asyncio.wait_for(call_task, 90)
    assert record.ended_by == "bot" and record.playback.voice_since(0, record.end_ms), "the bot said nothing"
    assert not any("no answering-machine verdict" in r.get("msg", "") for r in fleet.pods["B"].lines)


async def test_post_calls_on_two_pods_keeps_the_global_rate(fleet):
    # A and C have the REST credentials.
    fleet.api.default_callee = Callee(answer="busy")
    calls = 10

    async def place(pod: str, n: int):
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.post(fleet.pods[pod].base + "/calls", json={"to": f"+1555800{n:04d}", "amd": False},
                                   headers={"Authorization": f"Bearer {API_TOKEN}"})

    # A pod's first call is late by its REST client's start-up (after its turn was taken), so
    # it would arrive bunched with the next: measure warm pods, as a fleet in service is.
    for n, pod in enumerate("AC"):
        assert (await place(pod, 100 + n)).status_code == 201
    first = len(fleet.api.created)
    replies = await asyncio.gather(*(place("AC"[n % 2], n) for n in range(calls)))
    assert all(r.status_code == 201 for r in replies), [r.text for r in replies]
    times = sorted(c["t"] for c in fleet.api.created[first:])
    assert len(times) == calls
    measured = (len(times) - 1) / (times[-1] - times[0])
    gaps = [b - a for a, b in zip(times, times[1:])]
    print(f"POST /calls on two pods: {calls} calls at {measured:.2f}/s (IVR_OUTBOUND_RATE {OUTBOUND_RATE:g}), "
          f"smallest gap {min(gaps) * 1000:.0f} ms")
    assert measured <= OUTBOUND_RATE * 1.1  # not twice the rate
    assert min(gaps) >= 0.5 / OUTBOUND_RATE  # and never a burst (allowing the requests' jitter)


async def test_a_campaign_run_on_two_pods_splits_its_numbers_and_keeps_its_rate(fleet, tmp_path):
    rate, numbers = 20.0, [f"+1555900{i:04d}" for i in range(40)]
    targets = [(n, {"name": f"Person {i}"}) for i, n in enumerate(numbers)]
    fleet.api.default_callee = Callee(answer="answered", hold_s=0.05)
    first = len(fleet.api.created)

    async def runner(pod: str):
        rest = TwilioRest(ACCOUNT, TOKEN, base_url=fleet.pods["A"].env["IVR_TWILIO_API_URL"])
        shared = RedisState(fleet.redis_server.url, pod=f"campaign-{pod}")
        await shared.start()
        store = CallStore(tmp_path / pod)  # each pod its own records: the claims are what is shared
        campaign = Campaign("spring", Placer(rest, fleet.public, store), store, from_="+15550001111", rate=rate,
                            max_concurrent=8, poll_s=0.05, shared=shared, amd=False)
        try:
            return await campaign.run(targets)
        finally:
            await campaign.placer.aclose()
            await shared.aclose()

    p1, p2 = await asyncio.gather(runner("one"), runner("two"))
    created = fleet.api.created[first:]
    placed = [c["To"] for c in created]
    assert sorted(placed) == sorted(numbers)  # every number once, by one runner or the other
    assert p1.placed + p2.placed == len(numbers) and p1.placed and p2.placed
    times = sorted(c["t"] for c in created)
    measured = (len(times) - 1) / (times[-1] - times[0])
    print(f"campaign on two runners: {p1.placed} + {p2.placed} calls at {measured:.2f}/s (limit {rate:g})")
    assert measured <= rate * 1.1


async def test_losing_redis_loses_no_call_and_the_pods_recover_when_it_returns(fleet):
    b = fleet.pods["B"]
    call = sid(3)
    voice = await fleet.post("B", "/twiml/voice", {"CallSid": call, "From": CALLER, "To": BAKERY, "AccountSid": ACCOUNT})
    _, params = stream_of(voice.text)
    plan = CallPlan("operator", "script", "asks for a person, Redis gone meanwhile", [
        Dtmf("0", after=After("bot_silent", 0.5, 40.0)),
        Hangup(After("bot_silent", 15.0, 40.0)),
    ])
    emulator = fleet.stream("B", call, params, plan)
    running = asyncio.create_task(emulator.run())
    await b.wait_for(logged("call started", call), 30)
    fleet.redis_server.kill()  # mid-call
    await b.wait_for(logged("is unreachable"), 30)  # B's verdict subscriber notices at once
    record = await asyncio.wait_for(running, 90)
    assert record.ended_by == "bot" and not record.errors, record.errors  # the call went on to its end
    # The same pod still serves the transfer (single-pod behaviour).
    fallback = await fleet.post("B", "/twiml/fallback", {"CallSid": call, "AccountSid": ACCOUNT})
    assert f"<Number>{STAFF}</Number>" in fallback.text
    async with httpx.AsyncClient() as http:
        ready = await http.get(b.base + "/readyz")
        assert ready.status_code == 200 and "degraded" in ready.text and "Redis" in ready.text, ready.text
        assert "ivr_redis_up 0.0" in (await http.get(b.base + "/metrics")).text
        fleet.redis_server.start()
        await asyncio.gather(*(p.wait_for(logged("answers again"), 30) for p in (b,)))
        ready = await http.get(b.base + "/readyz")
        assert ready.status_code == 200 and ready.text == "ready\n"
        assert "ivr_redis_up 1.0" in (await http.get(b.base + "/metrics")).text
    warnings = [r for r in b.lines if "is unreachable" in r.get("msg", "")]
    assert len(warnings) == 1  # once per change, not once per operation


async def test_a_pod_drains_alone_and_hands_the_others_only_what_they_need(fleet):
    a, b = fleet.pods["A"], fleet.pods["B"]
    call = sid(4)
    # The webhook on B, the stream on A: a call A holds when the drain begins.
    voice = await fleet.post("B", "/twiml/voice", {"CallSid": call, "From": CALLER, "To": BAKERY, "AccountSid": ACCOUNT})
    _, params = stream_of(voice.text)
    plan = CallPlan("long", "script", "a call longer than the drain", [Wait(After("at", 60.0)), Hangup(After("at", 60.0, 90.0))])
    running = asyncio.create_task(fleet.stream("A", call, params, plan).run())
    await a.wait_for(logged("call started", call), 30)
    a.signal(signal.SIGTERM)
    await a.wait_for(logged("draining"), 10)
    busy = await fleet.post("A", "/twiml/voice", {"CallSid": sid(5), "From": CALLER, "To": BAKERY, "AccountSid": ACCOUNT})
    assert "<Connect>" not in busy.text  # A answers busy...
    taken = await fleet.post("B", "/twiml/voice", {"CallSid": sid(6), "From": CALLER, "To": BAKERY, "AccountSid": ACCOUNT})
    assert "<Connect>" in taken.text  # ...but its drain is not B's
    async with httpx.AsyncClient() as http:
        assert (await http.get(b.base + "/readyz")).text == "ready\n"
    record = await asyncio.wait_for(running, 90)
    assert record.ended_by == "bot" and not record.errors, record.errors  # ended politely at the deadline
    assert await a.wait_exit(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert any(r.get("msg", "").startswith("drain deadline: ending 1 call(s) politely") for r in a.lines)
    # What B needs: how A's call goes on (hung up by the bot), for Twilio's fallback request.
    fallback = await fleet.post("B", "/twiml/fallback", {"CallSid": call, "AccountSid": ACCOUNT})
    assert "<Hangup" in fallback.text and "<Say>" not in fallback.text, fallback.text
    # What B must not get: lines A held. A holds none now; B holds only the call it answered.
    held = {k: await fleet.redis.zrange(k, 0, -1) for k in await fleet.redis.keys("ivr:lines:*")}
    assert list(held.values()) == [[sid(6)]], held
