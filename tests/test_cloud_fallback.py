"""A cloud provider that is down: the recogniser and the brain fall back, and come back.

Deepgram and OpenAI are their fakes on 127.0.0.1, driven by the real clients; an outage is the
fake not listening (`down()`, or a closed port), answering 503, or accepting a connection and
never answering it. The embedded recogniser is the real one (faster-whisper) on recorded speech.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from prometheus_client import REGISTRY

from cloud_helpers import frames, silence, tone, until
from fakes.deepgram import FakeDeepgram
from fakes.openai_api import FakeOpenAI
from ivr.commands.stt import read_as_phone_ulaw
from ivr.config import Settings
from ivr.providers import registry
from ivr.providers.base import CallContext, CallerInput, EndOfTurn, Final, SpeechStarted, TextDelta, ToolCall
from ivr.providers.deepgram import DeepgramStt
from live_server import free_port, serve
from replay_helpers import SAMPLES

KEY = "dg-test-key"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
QUICK_PROBES = (0.05,)


@pytest.fixture
def fake():
    with FakeDeepgram(KEY) as f:
        yield f


def gauge(name: str, provider: str) -> float:
    return REGISTRY.get_sample_value(name, {"provider": provider}) or 0.0


def words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def deepgram_with_fallback(url: str):
    """The recogniser `ivr serve` builds for DEEPGRAM_API_KEY: Deepgram, the embedded one standing in."""
    settings = Settings.from_env({"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": url, "IVR_TTS": "local", "IVR_BRAIN": "flow"})
    stt = registry.build(settings).stt
    stt.health.probe_delays_s = QUICK_PROBES
    return stt


async def feed(session, audio: bytes) -> None:
    for frame in frames(audio):
        await session.send(frame)


async def next_turn(events: asyncio.Queue, timeout: float = 30.0) -> EndOfTurn:
    async with asyncio.timeout(timeout):
        while True:
            event = await events.get()
            if isinstance(event, EndOfTurn) and event.text:
                return event


async def pump(session, events: asyncio.Queue) -> None:
    async for event in session:
        events.put_nowait(event)


# --- health: said once per change, probed with backoff ----------------------------------------------


async def test_deepgram_down_is_said_once_probed_alone_and_seen_when_it_returns(fake, caplog):
    fake.unavailable = True
    stt = DeepgramStt(KEY, url=fake.url)
    stt.health.probe_delays_s = QUICK_PROBES
    with caplog.at_level(logging.INFO, logger="ivr.providers"):
        await stt.load()
        assert not stt.health.up and gauge("ivr_provider_up", "deepgram") == 0
        await until(lambda: fake.refused >= 4)  # the start-up check, then the probe, again and again
        fake.unavailable = False
        await until(lambda: stt.health.up)
    assert gauge("ivr_provider_up", "deepgram") == 1
    down = [r for r in caplog.records if "Deepgram cannot be reached" in r.getMessage()]
    back = [r for r in caplog.records if "Deepgram answers again" in r.getMessage()]
    assert len(down) == 1 and "HTTP 503" in down[0].getMessage() and len(back) == 1
    await stt.health.aclose()


# --- the recogniser ----------------------------------------------------------------------------------


async def test_speech_held_while_deepgram_does_not_answer_reaches_the_embedded_recogniser():
    """Deepgram accepts the connection and never answers it: the call opens at once (its greeting
    waits for no handshake), the caller's whole question waits in the buffer, and when the
    handshake times out the embedded recogniser hears all of it, dated on the call's clock."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader, writer) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stt = deepgram_with_fallback(f"ws://127.0.0.1:{port}")
        stt.primary.connect_timeout_s = 0.5
        await stt.stand_in.ready()
        session = await stt.open(CallContext(call_sid="CAheld"))
        assert not session.on_backup  # opened without waiting for Deepgram
        events: asyncio.Queue = asyncio.Queue()
        reader = asyncio.create_task(pump(session, events))
        question = read_as_phone_ulaw(SAMPLES / "hours-question.wav")
        await feed(session, silence(500) + question + silence(1500))
        turn = await next_turn(events)
        assert "what time are you open" in words(turn.text)
        assert session.on_backup and held  # Deepgram was reached (TCP) but never answered
        assert turn.at_ms > 500 + 1000  # on the call's clock: after the leading silence and speech
        assert not stt.health.up
        await session.aclose()
        await reader
        await stt.aclose()
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_call_moves_to_the_embedded_recogniser_when_deepgram_goes_and_back_when_it_returns(fake, caplog):
    stt = deepgram_with_fallback(fake.url)
    await stt.load()
    on_fallback = gauge("ivr_calls_on_fallback", "deepgram")
    session = await stt.open(CallContext(call_sid="CAmove"))
    events: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(pump(session, events))
    # 1. Deepgram hears the first turn.
    fake.say("Hi there.")
    await feed(session, silence(300) + tone(800) + silence(1200))
    first = await next_turn(events)
    assert first.text == "Hi there."
    # 2. Deepgram goes; the call is carried on by the embedded recogniser, which hears the question.
    with caplog.at_level(logging.INFO, logger="ivr.providers"):
        fake.down()
        await until(lambda: session.on_backup)
        assert gauge("ivr_calls_on_fallback", "deepgram") == on_fallback + 1
        question = read_as_phone_ulaw(SAMPLES / "hours-question.wav")
        await feed(session, silence(200) + question + silence(1500))
        second = await next_turn(events)
        assert "what time are you open" in words(second.text)
        assert second.at_ms > first.at_ms + 1000  # the embedded session's times are on the call's clock
        # 3. Deepgram returns: the probe notices, and the call goes back to it between turns.
        fake.up()
        await until(lambda: stt.health.up)
        fake.say("No thanks.")
        await feed(session, silence(200) + tone(800) + silence(1200))
        third = await next_turn(events)
    assert third.text == "No thanks." and not session.on_backup
    assert third.at_ms > second.at_ms
    assert gauge("ivr_calls_on_fallback", "deepgram") == on_fallback
    # Said once each way, for the process; the call's own moves at INFO.
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("Deepgram cannot be reached" in m for m in messages) == 1
    assert sum("Deepgram answers again" in m for m in messages) == 1
    assert not any("reconnecting" in m for m in messages)
    await session.aclose()
    await reader
    await stt.aclose()


async def test_calls_that_start_while_deepgram_is_down_use_the_embedded_recogniser_without_trying_it(fake):
    fake.unavailable = True
    stt = deepgram_with_fallback(fake.url)
    stt.health.probe_delays_s = (60.0,)  # no probe during the test: only calls could knock
    await stt.load()
    knocks = fake.refused
    sessions = [await stt.open(CallContext(call_sid=f"CA{i}")) for i in range(3)]
    assert all(s.on_backup for s in sessions)
    events: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(pump(sessions[0], events))
    await feed(sessions[0], silence(200) + read_as_phone_ulaw(SAMPLES / "no-thanks.wav") + silence(1500))
    assert "no thanks" in words((await next_turn(events)).text)
    assert fake.refused == knocks  # no call tried the dead Deepgram
    for s in sessions:
        await s.aclose()
    await reader
    await stt.aclose()


class DyingCloudStt:
    """A cloud recogniser that settles one Final of a turn and then is gone: its session gives up
    (as a Deepgram session with `fallback_ready` does) holding the audio after that Final."""

    def __init__(self, final: Final, unsettled_from_ms: int) -> None:
        from ivr.providers.health import Health

        self.health = Health("dying", "Dying cloud", probe=None, cooloff_s=3600)
        self.final, self.unsettled_from_ms = final, unsettled_from_ms

    async def load(self) -> None:
        pass

    async def open(self, call=None):
        return DyingSession(self)


class DyingSession:
    def __init__(self, engine: DyingCloudStt) -> None:
        self.engine = engine
        self.audio = bytearray()
        self.fallback_ready = False
        self.events: asyncio.Queue = asyncio.Queue()

    async def send(self, ulaw: bytes) -> None:
        self.audio += ulaw
        if len(self.audio) >= self.engine.final.end_ms * 8 and self.events.empty():
            self.events.put_nowait(SpeechStarted(self.engine.final.start_ms))
            self.events.put_nowait(self.engine.final)
            self.events.put_nowait(None)

    def unsettled(self) -> tuple[int, bytes]:
        return self.engine.unsettled_from_ms, bytes(self.audio[self.engine.unsettled_from_ms * 8:])

    async def finalize(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        from ivr.providers import cloud

        while True:
            event = await self.events.get()
            if event is None:
                self.engine.health.failed("gone")
                raise cloud.Unreachable("Dying cloud: gone")
            yield event


async def test_words_settled_before_the_switch_open_the_turn_the_embedded_recogniser_ends():
    """The cloud settled "No thanks." of the turn in progress, then went: the embedded recogniser
    hears the rest (from where the cloud's Final ended), and the turn's text is both, in order."""
    from ivr.providers.fallback import FallbackStt

    whisper = registry.build(Settings.from_env({"IVR_STT": "local", "IVR_TTS": "local", "IVR_BRAIN": "flow"})).stt
    first = silence(300) + read_as_phone_ulaw(SAMPLES / "no-thanks.wav")
    settled_ms = len(first) // 8
    stt = FallbackStt(DyingCloudStt(Final("No thanks.", 300, settled_ms), unsettled_from_ms=settled_ms), lambda: whisper)
    await stt.load()
    session = await stt.open(CallContext(call_sid="CAcarry"))
    events: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(pump(session, events))
    await feed(session, first + silence(100) + read_as_phone_ulaw(SAMPLES / "hours-question.wav") + silence(1500))
    turn = await next_turn(events)
    assert session.on_backup
    text = words(turn.text)
    assert text.startswith("no thanks ") and text.count("thanks") == 1 and "time" in text and "open" in text
    await session.aclose()
    await reader


# --- readiness -----------------------------------------------------------------------------------------


def test_without_an_embedded_recogniser_a_dead_deepgram_makes_the_server_not_ready(fake, monkeypatch):
    import httpx

    from ivr.call import CallFactory
    from ivr.server import create_app

    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # the `local` extra not installed
    fake.unavailable = True
    settings = Settings.from_env({"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": fake.url, "IVR_TTS": "local",
                                  "IVR_BRAIN": "flow"})
    providers = registry.build(settings)
    assert not providers.stt.has_backup
    providers.stt.health.probe_delays_s = QUICK_PROBES
    app = create_app(settings, handler_factory=CallFactory(providers))
    with serve(app) as base:
        response = httpx.get(base + "/readyz")
        assert response.status_code == 503
        assert "Deepgram" in response.text and "recogniser" in response.text
        fake.unavailable = False
        asyncio.run(until(lambda: httpx.get(base + "/readyz").status_code == 200, timeout=10))
        assert httpx.get(base + "/readyz").text == "ready\n"


# --- the brain -----------------------------------------------------------------------------------------


def openai_brain(base_url: str, flow: str = ""):
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": base_url, "IVR_FLOW": flow})
    brain = registry.BRAINS["openai"](settings, None)
    brain.health.probe_delays_s = QUICK_PROBES
    return brain


async def said(outputs) -> list:
    return [o.text if isinstance(o, TextDelta) else o async for o in outputs]


async def test_openai_unreachable_means_an_apology_then_the_flow_answers_and_then_openai_again():
    port = free_port()  # nothing listens there yet
    brain = openai_brain(f"http://127.0.0.1:{port}/v1")
    await brain.load()
    assert not brain.health.up  # seen at start-up, said once
    # A call that began while it was down starts on the flow: its greeting and menu.
    early = await brain.open(CallContext(call_sid="CAearly"))
    greeting = " ".join(await said(early.greeting()))
    assert "Sunrise Bakery" in greeting and "press 1 for hours" in greeting
    await early.aclose()
    fake = FakeOpenAI("sk-test")
    with serve(fake.app, port=port):
        await until(lambda: brain.health.up, timeout=10)
        session = await brain.open(CallContext(call_sid="CAlive"))
        assert await said(session.respond([], CallerInput(text="What time are you open?")))
        assert len(fake.requests) == 1
        await session.aclose()
    # Gone again mid-call: the caller hears an apology, and the flow answers what they asked.
    session = await brain.open(CallContext(call_sid="CAcut"))
    await said(session.greeting())
    reply = await said(session.respond([], CallerInput(text="What time are you open?")))
    assert reply[0] == brain.apology + " "
    assert "open tuesday to sunday" in words(" ".join(reply[1:]))
    assert gauge("ivr_calls_on_fallback", "openai") >= 1
    # The rest of the call stays on the flow (no second apology), with the flow's own actions.
    reply = await said(session.respond([], CallerInput(text="Can I talk to someone?")))
    assert brain.apology + " " not in reply and any(isinstance(o, ToolCall) and o.name == "transfer" for o in reply)
    await session.aclose()
    await brain.aclose()


async def test_an_openai_error_before_the_first_word_gets_the_apology_and_the_flow():
    fake = FakeOpenAI("sk-test")
    with serve(fake.app) as url:
        brain = openai_brain(url + "/v1")
        await brain.load()
        fake.faults.extend(["500", "500"])  # the try and its retry
        session = await brain.open(CallContext(call_sid="CA500"))
        reply = await said(session.respond([], CallerInput(text="Where are you located?")))
        assert reply[0] == brain.apology + " " and "twelve market street" in words(" ".join(reply[1:]))
        assert not brain.health.up
        await session.aclose()
        await until(lambda: brain.health.up, timeout=10)  # the model list answers: it is back
        await brain.aclose()


def test_with_no_flow_to_stand_in_a_dead_openai_makes_the_server_not_ready(tmp_path):
    import httpx

    from ivr.call import CallFactory
    from ivr.server import create_app

    flow = tmp_path / "llm.yaml"
    flow.write_text('greeting: "Hello."\nsystem_prompt: You answer the phone.\nnodes: {main: {say: unused}}\n')
    port = free_port()
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
                                  "IVR_FLOW": str(flow), "IVR_STT": "local", "IVR_TTS": "local"})
    providers = registry.build(settings)
    assert providers.brain.backup is None
    providers.brain.health.probe_delays_s = QUICK_PROBES
    app = create_app(settings, handler_factory=CallFactory(providers))
    with serve(app) as base:
        response = httpx.get(base + "/readyz")
        assert response.status_code == 503 and "OpenAI" in response.text
        fake = FakeOpenAI("sk-test")
        with serve(fake.app, port=port):
            asyncio.run(until(lambda: httpx.get(base + "/readyz").status_code == 200, timeout=10))


# --- through `ivr serve`, from outside -----------------------------------------------------------------


async def test_ivr_serve_with_deepgram_and_openai_down_answers_callers_and_uses_them_once_back(tmp_path):
    """The real server in a subprocess, called by the replay harness as Twilio. Deepgram and
    OpenAI down at start-up: ready anyway (the embedded recogniser and the call flow stand in), a
    call understood and answered to its end, one log line per outage however many reconnects.
    Then both back, and the next call is heard by Deepgram and answered by OpenAI."""
    import httpx

    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.run import replay_file
    from ops_server import ServeProcess

    hours = SAMPLES / "hours.yaml"
    openai_port = free_port()  # nothing listens there until OpenAI "returns"
    with FakeDeepgram(KEY) as fake:
        fake.down()
        server = ServeProcess({
            "IVR_STT": "deepgram", "DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": fake.url, "IVR_DEEPGRAM_ENDPOINTING_MS": "700",
            "IVR_BRAIN": "openai", "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": f"http://127.0.0.1:{openai_port}/v1",
            "IVR_PROVIDER_PROBE_MAX_S": "0.5",
        })
        try:
            await server.start()
            async with httpx.AsyncClient(base_url=server.base) as http:
                assert (await http.get("/readyz")).status_code == 200
                out = await replay_file(hours, ReplayOptions(url=server.media_url, speed=2.0), tmp_path / "down")
                # The flow hangs up only on "No thanks, that's all": the caller was understood.
                assert out.report["call"]["ended_by"] == "bot", out.report["errors"]
                assert [t["response_latency_ms"] is not None for t in out.report["turns"]] == [True, True]
                metrics = (await http.get("/metrics")).text
                for provider in ("deepgram", "openai"):
                    assert f'ivr_provider_up{{provider="{provider}"}} 0.0' in metrics
                    assert f'ivr_calls_on_fallback{{provider="{provider}"}} 0.0' in metrics  # the call is over
                assert 'ivr_provider_fallbacks_total{provider="deepgram"} 1.0' in metrics
                for name in ("Deepgram", "OpenAI"):
                    outage = [line for line in server.lines if f"{name} cannot be reached" in line.get("msg", "")]
                    assert len(outage) == 1 and outage[0]["level"] == "warning"
                assert sum(line.get("level") == "warning" and "Deepgram" in line.get("msg", "") for line in server.lines) == 1
                fake.up()
                openai = FakeOpenAI("sk-test")
                with serve(openai.app, port=openai_port):
                    for name in ("Deepgram", "OpenAI"):
                        await server.wait_for(lambda line: f"{name} answers again" in line.get("msg", ""), 20)
                    fake.say("Hi. What time are you open?", "No thanks, that's all.")
                    out = await replay_file(hours, ReplayOptions(url=server.media_url, speed=2.0), tmp_path / "back")
                    assert out.report["call"]["ended_by"] == "bot", out.report["errors"]
                    assert any(stream.audio_bytes for stream in fake.streams)  # heard by Deepgram
                    assert [r["messages"][-1]["content"] for r in openai.requests] == \
                        ["Hi. What time are you open?", "No thanks, that's all."]  # answered by OpenAI
                metrics = (await http.get("/metrics")).text
                assert 'ivr_provider_up{provider="deepgram"} 1.0' in metrics
        finally:
            await server.stop()


async def test_without_a_fallback_a_call_waits_for_deepgram_and_loses_nothing(fake):
    """No embedded recogniser: a call that starts during the outage keeps the caller's audio while
    the probe tries Deepgram; once Deepgram is back the call's socket hears all of it."""
    fake.unavailable = True
    stt = DeepgramStt(KEY, url=fake.url)
    stt.health.probe_delays_s = QUICK_PROBES
    await stt.load()
    fake.say("Hello there.")
    session = await stt.open(CallContext(call_sid="CAwait"))
    events: asyncio.Queue = asyncio.Queue()
    reader = asyncio.create_task(pump(session, events))
    await feed(session, silence(300) + tone(800) + silence(1200))
    await until(lambda: fake.refused >= 3)  # still down for a few probes
    assert not fake.streams
    fake.unavailable = False
    turn = await next_turn(events)
    assert turn.text == "Hello there." and 1050 <= turn.at_ms <= 1150  # on the call's clock
    # The call's socket (the probe's carries no audio) got everything said while it was down.
    assert max(stream.audio_bytes for stream in fake.streams) >= (300 + 800 + 1200) * 8
    await session.aclose()
    await reader
    await stt.health.aclose()


# --- when the stand-ins load -------------------------------------------------------------------------


async def test_the_stand_ins_load_on_the_first_failure_unless_preloaded(fake):
    """A cloud-only server carries no embedded model until a provider fails (IVR_STAND_INS)."""
    env = {"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": fake.url, "ELEVENLABS_API_KEY": "el-test",
           "ELEVENLABS_VOICE_ID": "v", "IVR_ELEVENLABS_URL": f"ws://127.0.0.1:{free_port()}", "IVR_BRAIN": "flow"}
    providers = registry.build(Settings.from_env(env))
    await providers.load()
    stt, tts = providers.stt, providers.tts
    assert stt.has_backup and tts.has_backup
    assert not stt.stand_in.loaded and not tts.stand_in.loaded
    # The voice fails: its stand-in loads, the recogniser's does not.
    tts.health.failed("test outage")
    await asyncio.wait_for(tts.stand_in.ready(), 60)
    assert tts.stand_in.loaded and not stt.stand_in.loaded
    # A turn spoken while the cloud voice is down comes from the embedded one.
    stream = tts.stream()
    await stream.push("Hello there.")
    await stream.end()
    audio = b"".join([chunk.audio async for chunk in stream])
    assert len(audio) > 8000
    stt.health.failed("test outage")
    await asyncio.wait_for(stt.stand_in.ready(), 60)
    assert stt.stand_in.loaded
    await stt.aclose()

    preloaded = registry.build(Settings.from_env({**env, "IVR_STAND_INS": "preload"}))
    await preloaded.load()
    assert preloaded.stt.stand_in.loaded and preloaded.tts.stand_in.loaded
    await preloaded.stt.aclose()


def test_an_unknown_stand_in_mode_is_a_plain_error():
    from ivr.config import ConfigError

    with pytest.raises(ConfigError, match="IVR_STAND_INS"):
        Settings.from_env({"IVR_STAND_INS": "sometimes"}).validate()


async def test_a_turn_begun_while_the_stand_in_voice_loads_is_spoken_once_it_has():
    from ivr.providers.elevenlabs import _StandInStream
    from ivr.providers.standin import StandIn

    local = registry.build(Settings.from_env({"IVR_STT": "local", "IVR_TTS": "local", "IVR_BRAIN": "flow"})).tts
    stand_in = StandIn("the embedded voice", lambda: local)
    stream = _StandInStream(stand_in)
    assert await stream.push("One.") == 0 and await stream.push("Two.") == 1
    await stream.end()
    pieces = [chunk.piece async for chunk in stream if chunk.audio]
    assert stand_in.loaded and set(pieces) == {0, 1}
