"""Deepgram live STT: the client (websockets, messages read as JSON) against the fake on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from cloud_helpers import frames, silence, tone, until
from fakes.deepgram import FakeDeepgram
from ivr.config import ConfigError, Settings
from ivr.providers import registry
from ivr.providers.base import EndOfTurn, Final, Interim, SpeechStarted
from ivr.providers.deepgram import DeepgramStt, EagerEndOfTurn, ResendBuffer, TurnResumed

KEY = "dg-test-key"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def fake():
    with FakeDeepgram(KEY) as f:
        yield f


def engine(fake, **kw) -> DeepgramStt:
    return DeepgramStt(KEY, url=fake.url, **kw)


async def collect(session, until_turns: int = 1, timeout: float = 10.0) -> list:
    events = []
    async with asyncio.timeout(timeout):
        async for event in session:
            events.append(event)
            if sum(1 for e in events if isinstance(e, EndOfTurn) and e.text) >= until_turns:
                return events
    return events


async def feed(session, audio: bytes) -> None:
    for frame in frames(audio):
        await session.send(frame)


async def transcribe(fake, text: str, audio: bytes, **kw) -> list:
    """One session that hears `audio` (recognised as `text`) until its first turn ends, then closes."""
    fake.say(text)
    session = await engine(fake, **kw).open()
    reader = asyncio.create_task(collect(session))
    await feed(session, audio)
    events = await reader
    await session.aclose()
    return events


async def test_an_utterance_gives_speech_started_interims_a_final_and_the_end_of_turn(fake):
    events = await transcribe(fake, "What time are you open?", silence(400) + tone(1500) + silence(500))
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and 380 <= events[0].at_ms <= 420  # dated to the onset
    assert Interim in kinds and kinds.index(Interim) < kinds.index(Final)
    final = next(e for e in events if isinstance(e, Final))
    assert final.text == "What time are you open?" and final.words[0].text == "What"
    end = events[-1]
    assert isinstance(end, EndOfTurn) and end.text == "What time are you open?"
    assert 1850 <= end.at_ms <= 1950  # where the speech ended, not where it was decided
    stream = fake.streams[0]
    q = stream.query
    assert (q["encoding"], q["sample_rate"], q["interim_results"], q["vad_events"]) == ("mulaw", "8000", "true", "true")
    assert q["endpointing"] == "300" and q["utterance_end_ms"] == "1000" and q["model"] == "nova-3"
    await until(lambda: stream.closed_by_client)  # CloseStream at hang-up (the fake's thread notes it)


async def test_a_socket_cut_mid_sentence_loses_nothing(fake):
    """The fake drops the socket 400 ms into the sentence; the session reconnects, resends the
    audio since the last final, and the whole sentence still arrives, once, on the call's clock."""
    fake.say("I would like to order a birthday cake", "No thanks")
    fake.cut_after_ms = 400
    stt = engine(fake)
    session = await stt.open()
    reader = asyncio.create_task(collect(session, until_turns=2))
    await feed(session, silence(3200) + tone(1200))
    await until(lambda: len(fake.streams) == 2)  # the second socket is up (resending)
    await feed(session, silence(600) + tone(500) + silence(600))
    events = await reader
    await session.aclose()
    turns = [e for e in events if isinstance(e, EndOfTurn) and e.text]
    assert [t.text for t in turns] == ["I would like to order a birthday cake", "No thanks"]
    assert 4350 <= turns[0].at_ms <= 4450  # times shifted back onto the call's audio clock
    assert session.reconnects == 1
    # The second socket got only the audio after the last final (the 3 s empty final), not the call.
    assert 1200 * 8 <= fake.streams[1].audio_bytes < (3200 + 1200 + 1700) * 8 - 2000 * 8


async def test_resend_buffer_keeps_only_unsettled_audio():
    buf = ResendBuffer()
    buf.append(b"a" * 800)
    buf.append(b"b" * 800)
    buf.trim_to(1000)
    assert buf.base == 1000 and buf.since(1000) == b"b" * 600 and buf.since(1200) == b"b" * 400
    buf.trim_to(5000)
    assert buf.base == 1600 and buf.since(1600) == b""


async def test_finalize_ends_the_turn_in_progress(fake):
    fake.say("Four two one")
    session = await engine(fake).open()
    reader = asyncio.create_task(collect(session))
    await feed(session, silence(200) + tone(800))
    await until(lambda: fake.streams and fake.streams[0].audio_bytes >= 1000 * 8)
    await session.finalize()
    events = await reader
    await session.aclose()
    assert fake.streams[0].finalizes == 1
    assert events[-1] == EndOfTurn("Four two one", events[-1].at_ms)


async def test_audio_goes_in_chunks_and_the_last_partial_one_is_not_held_back(fake):
    """Twilio's 20 ms frames go three to a message at 60 ms; at the end of the call the two frames
    still waiting for a full chunk go out before Finalize, so the last words are heard."""
    fake.say("Four two one")
    session = await engine(fake, chunk_ms=60).open()
    reader = asyncio.create_task(collect(session))
    await until(lambda: session._conn is not None)  # live: nothing is left for a resend to send at once
    await feed(session, silence(200) + tone(800) + silence(40))  # 52 frames: 17 chunks and 1 frame over
    # The fake's handler may not have run yet when the client's handshake is done (busy machine).
    await until(lambda: fake.streams and fake.streams[0].audio_bytes >= 51 * 160)
    assert set(fake.streams[0].audio_messages) == {480}
    await session.finalize()
    events = await reader
    await session.aclose()
    assert fake.streams[0].audio_bytes == 52 * 160 and fake.streams[0].audio_messages[-1] == 160
    assert events[-1].text == "Four two one"


def test_the_chunk_size_is_whole_frames_up_to_100_ms():
    with pytest.raises(ConfigError, match="IVR_DEEPGRAM_CHUNK_MS"):
        DeepgramStt(KEY, chunk_ms=50)
    with pytest.raises(ConfigError, match="IVR_DEEPGRAM_CHUNK_MS"):
        DeepgramStt(KEY, chunk_ms=120)
    assert DeepgramStt(KEY).chunk_bytes == 320


async def test_keepalive_flows_when_no_audio_does(fake):
    stt = engine(fake)
    stt.keepalive_s = 0.1
    session = await stt.open()
    await feed(session, silence(100))
    await until(lambda: fake.streams and fake.streams[0].keepalives >= 2)
    await session.aclose()


async def test_a_bad_key_fails_at_start_up_naming_the_variable(fake):
    stt = DeepgramStt("wrong-key", url=fake.url)
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
        await stt.load()


async def test_a_key_revoked_mid_service_costs_the_call_its_ears_not_its_life(fake, caplog):
    stt = engine(fake)
    fake.reject_key = True
    session = await stt.open()
    events = [e async for e in session]  # iteration ends: the engine logs it and the call goes on
    assert events == []
    assert "DEEPGRAM_API_KEY" in caplog.text
    await session.aclose()


def test_registry_picks_deepgram_when_its_key_is_set_and_names_the_variable_when_missing(fake):
    settings = Settings.from_env({"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": fake.url, "IVR_TTS": "local", "IVR_BRAIN": "flow"})
    stt = registry.build(settings).stt
    assert type(stt.primary).__name__ == "DeepgramStt" and stt.has_backup  # the embedded one stands in
    # nova ends turns on silence: the turn model judges them, whichever recogniser serves the call.
    assert type(stt).__name__ == "TurnGatedStt" and type(stt.inner).__name__ == "FallbackStt"
    # The embedded recogniser itself, not gated again: its turns are not judged twice.
    from ivr.providers.local_stt import WhisperStt  # Moonshine's engine is one too

    assert isinstance(stt.stand_in.engine, WhisperStt)
    # Flux has a turn model of its own; the embedded recogniser standing in for it has ours.
    flux = registry.build(Settings.from_env({"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": fake.url,
                                             "IVR_DEEPGRAM_MODEL": "flux-general-en"})).stt
    assert type(flux).__name__ == "FallbackStt" and type(flux.stand_in.engine).__name__ == "TurnGatedStt"
    with pytest.raises(ConfigError, match="IVR_STT=deepgram.*DEEPGRAM_API_KEY"):
        registry.build(Settings.from_env({"IVR_STT": "deepgram"}))
    with pytest.raises(ConfigError, match="IVR_DEEPGRAM_URL"):
        registry.build(Settings.from_env({"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": "ftp://x"}))


async def test_nova_turn_ends_are_judged_and_a_paused_sentence_is_one_turn(fake):
    """Deepgram's endpointing (300 ms) ends a turn at each pause; the turn model holds the first
    half ("... wondering if", which cannot end a sentence), so the caller's sentence is one turn."""
    from pathlib import Path

    paused = (Path(__file__).parent / "samples" / "paused" / "piper_05.ulaw").read_bytes()
    settings = Settings.from_env({"DEEPGRAM_API_KEY": KEY, "IVR_DEEPGRAM_URL": fake.url})
    stt = registry.build(settings).stt
    await stt.load()
    fake.say("I was wondering if", "you have any gluten free bread.")
    session = await stt.open()
    reader = asyncio.create_task(collect(session, timeout=20))

    async def line() -> None:
        await feed(session, paused)
        while True:  # then silence in real time, as a phone line carries it, until the turn ends
            await session.send(silence(20))
            await asyncio.sleep(0.02)

    carrier = asyncio.create_task(line())
    events = await reader
    carrier.cancel()
    await session.aclose()
    ends = [e for e in events if isinstance(e, EndOfTurn)]
    assert [e.text for e in ends] == ["I was wondering if you have any gluten free bread."]
    assert session.decisions[0].unfinished_text and not session.decisions[0].complete


async def test_flux_ends_turns_itself_and_signals_eager_ends_and_resumptions(fake):
    # A pause long enough for an eager end (250 ms) but not the end (500 ms), then more speech.
    events = await transcribe(fake, "Where are you located", silence(200) + tone(600) + silence(300) + tone(400) + silence(700),
                              model="flux-general-en", eager_eot=0.5)
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted
    assert kinds.index(EagerEndOfTurn) < kinds.index(TurnResumed) < kinds.index(EndOfTurn)
    assert events[-1].text == "Where are you located"
    assert fake.streams[0].path == "/v2/listen" and fake.streams[0].query["model"] == "flux-general-en"


def _sdk_model(message: dict):
    """The deepgram-sdk type for a message, by its `type` (the SDK is the reference for fields)."""
    from deepgram.listen.v1 import types as v1
    from deepgram.listen.v2 import types as v2

    models = {"Results": v1.ListenV1Results, "UtteranceEnd": v1.ListenV1UtteranceEnd,
              "SpeechStarted": v1.ListenV1SpeechStarted, "Metadata": v1.ListenV1Metadata,
              "TurnInfo": v2.ListenV2TurnInfo, "Connected": v2.ListenV2Connected}
    return models[message["type"]]


async def test_every_message_the_fake_sends_is_valid_for_the_sdk_types(fake):
    """Our reader takes fields by name from plain JSON; the fake must send what the SDK's types
    (strictly validated, not just constructed) say Deepgram sends, or those names prove nothing."""
    events = await transcribe(fake, "What time are you open?", silence(400) + tone(1500) + silence(1500))
    await transcribe(fake, "Where are you located", silence(200) + tone(600) + silence(700),
                     model="flux-general-en", eager_eot=0.5)
    await until(lambda: len(fake.streams) == 2 and fake.streams[0].sent and fake.streams[0].sent[-1]["type"] == "Metadata")
    sent = fake.streams[0].sent + fake.streams[1].sent
    kinds = {m["type"] for m in sent}
    assert {"Results", "SpeechStarted", "Metadata", "TurnInfo"} <= kinds
    for message in sent:
        model = _sdk_model(message).model_validate(message)
        assert model.type == message["type"]
    final = next(m for m in fake.streams[0].sent if m["type"] == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"])
    words = _sdk_model(final).model_validate(final).channel.alternatives[0].words
    ours = next(e for e in events if isinstance(e, Final)).words
    assert [w.text for w in ours] == [w.punctuated_word for w in words]
    assert [w.start_ms for w in ours] == [round(w.start * 1000) for w in words]


async def test_a_message_not_as_documented_is_skipped_and_the_stream_goes_on(fake, caplog):
    from ivr.providers.base import CallContext
    from ivr.providers.deepgram import DeepgramSession

    session = DeepgramSession(engine(fake), CallContext(call_sid="CA1"))
    session._handle({"type": "Results", "is_final": True, "start": 0.0, "duration": 1.0,
                     "channel": {"alternatives": [{"transcript": "hi", "words": [{"confidence": 0.9}]}]}})
    session._handle({"type": "UtteranceEnd", "channel": [0]})
    assert "not as documented" in caplog.text and session._events.empty()
    session._handle({"type": "Results", "is_final": True, "speech_final": True, "start": 0.0, "duration": 1.0,
                     "channel": {"alternatives": [{"transcript": "hi", "words": [
                         {"word": "hi", "punctuated_word": "Hi.", "start": 0.2, "end": 0.5, "confidence": 0.9}]}]}})
    final, end = session._events.get_nowait(), session._events.get_nowait()
    assert isinstance(final, Final) and final.text == "hi" and [(w.text, w.start_ms, w.end_ms) for w in final.words] == [("Hi.", 200, 500)]
    assert end == EndOfTurn("hi", 500)
