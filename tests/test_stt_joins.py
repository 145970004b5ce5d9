"""The embedded recogniser's stretches: a stretch cut at a short pause is decoded with what follows.

No model: a scripted VAD says where speech starts and ends, and a stand-in decoder writes how much
audio it was given, so each test sees exactly which audio went to the decoder and what came out.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from ivr.audio import ulaw_silence
from ivr.providers.base import EndOfTurn, Final, SpeechStarted, VadEvent
from ivr.providers.local_stt import LocalSttSession, SttOptions

FRAME_MS = 20


class ScriptedVad:
    """Gives each event once the audio clock reaches the time the real VAD would tell it: a start
    ~80 ms after its onset, an end 160 ms after the silence began."""

    def __init__(self, script: list[tuple[str, int]]) -> None:
        self._due = sorted(((at + (80 if kind == "speech_start" else 160), VadEvent(kind, at)) for kind, at in script),
                           key=lambda pair: pair[0])  # fmt: skip
        self._fed_ms = 0
        self.speaking = False

    def process(self, pcm: bytes) -> list[VadEvent]:
        self._fed_ms += len(pcm) // 16
        events = []
        while self._due and self._due[0][0] <= self._fed_ms:
            event = self._due.pop(0)[1]
            self.speaking = event.kind == "speech_start"
            events.append(event)
        return events


class CountingDecoder:
    """Writes "<n> ms" for n ms of audio; `gate` holds every decode until it is set."""

    def __init__(self, options: SttOptions) -> None:
        self.options = options
        self.joins = 0
        self.decoded: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def transcribe(self, pcm8: bytes, expected: tuple[str, ...] = ()) -> str:
        await self.gate.wait()
        ms = len(pcm8) // 16
        self.decoded.append(ms)
        return f"{ms} ms"


async def run(script, options: SttOptions, seconds: float = 4.0):
    """Feed `seconds` of audio, then finalize (which waits for every decode) and close."""
    engine = CountingDecoder(options)
    session = LocalSttSession(engine, ScriptedVad(script))
    for _ in range(int(seconds * 1000 / FRAME_MS)):
        await session.send(ulaw_silence(8 * FRAME_MS))
    await session.finalize()
    await session.aclose()
    events = [e async for e in session]
    return engine, events


OPTIONS = SttOptions(end_of_turn_ms=200, pre_roll_ms=200, join_pause_ms=300)


@pytest.mark.parametrize("end_of_turn_ms", [200, 600])
async def test_speech_after_a_short_pause_is_decoded_with_the_stretch_before_it(end_of_turn_ms):
    # "an ill dis- | -posed": the VAD ends speech at 1000 ms and hears it again at 1150 ms.
    script = [("speech_start", 300), ("speech_end", 1000), ("speech_start", 1150), ("speech_end", 2000)]
    engine, events = await run(script, replace(OPTIONS, end_of_turn_ms=end_of_turn_ms))
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.start_ms for f in finals] == [100]  # one stretch, from the first start's pre-roll
    assert finals[0].end_ms == 2160
    assert finals[0].text == "2060 ms"
    assert engine.joins == 1
    # The caller's starts are still told at once (barge-in), and the turn ends after its text.
    assert [e.at_ms for e in events if isinstance(e, SpeechStarted)] == [300, 1150]
    kinds = [type(e) for e in events if isinstance(e, (Final, EndOfTurn))]
    assert kinds == [Final, EndOfTurn]
    assert [e.text for e in events if isinstance(e, EndOfTurn)] == ["2060 ms"]


async def test_a_pause_longer_than_the_hold_keeps_two_stretches():
    script = [("speech_start", 300), ("speech_end", 1000), ("speech_start", 1400), ("speech_end", 2000)]
    engine, events = await run(script, OPTIONS)
    assert [(e.start_ms, e.end_ms) for e in events if isinstance(e, Final)] == [(100, 1160), (1200, 2160)]
    assert engine.joins == 0 and engine.decoded == [1060, 960]
    # With a 200 ms end of turn, each is a turn of its own.
    assert [e.text for e in events if isinstance(e, EndOfTurn)] == ["1060 ms", "960 ms"]


async def test_joins_can_be_turned_off():
    script = [("speech_start", 300), ("speech_end", 1000), ("speech_start", 1150), ("speech_end", 2000)]
    engine, events = await run(script, replace(OPTIONS, join_pause_ms=0, end_of_turn_ms=600))
    assert len([e for e in events if isinstance(e, Final)]) == 2 and engine.joins == 0


async def test_a_long_stretch_is_not_held():
    script = [("speech_start", 300), ("speech_end", 3000), ("speech_start", 3150), ("speech_end", 4000)]
    engine, events = await run(script, replace(OPTIONS, join_max_ms=2000), seconds=5)
    assert [e.start_ms for e in events if isinstance(e, Final)] == [100, 3060]
    assert engine.joins == 0


async def test_a_held_stretch_goes_out_when_its_hold_ends_not_at_the_end_of_turn():
    engine = CountingDecoder(replace(OPTIONS, end_of_turn_ms=1000))
    session = LocalSttSession(engine, ScriptedVad([("speech_start", 300), ("speech_end", 1000)]))
    arrivals: list[tuple[type, int]] = []

    async def read() -> None:
        async for event in session:
            arrivals.append((type(event), session.now_ms))

    reader = asyncio.create_task(read())
    for _ in range(int(2500 / FRAME_MS)):
        await session.send(ulaw_silence(8 * FRAME_MS))
        for _ in range(5):  # the decode and the emit run
            await asyncio.sleep(0)
    await session.aclose()
    await reader
    # Cut at 1160 and decoded at once, its text held until 300 ms after the speech ended; the
    # turn ends after 1000 ms of silence.
    assert engine.decoded == [1060]
    (_, start), (final, final_at), (end, end_at) = arrivals
    assert final is Final and 1300 <= final_at <= 1340
    assert end is EndOfTurn and end_at >= 2000


async def test_finalize_lets_a_held_stretch_out_before_the_turn_ends():
    script = [("speech_start", 300), ("speech_end", 1000)]
    engine, events = await run(script, replace(OPTIONS, end_of_turn_ms=600), seconds=1.2)
    assert [type(e) for e in events] == [SpeechStarted, Final, EndOfTurn]
    assert events[1].text == "1060 ms"


async def test_the_first_decode_of_a_joined_stretch_is_dropped_even_if_it_ends_late():
    script = [("speech_start", 300), ("speech_end", 1000), ("speech_start", 1150), ("speech_end", 2000)]
    engine = CountingDecoder(OPTIONS)
    engine.gate.clear()  # every decode waits: the first is still running when speech resumes
    session = LocalSttSession(engine, ScriptedVad(script))
    for _ in range(int(3000 / FRAME_MS)):
        await session.send(ulaw_silence(8 * FRAME_MS))
    engine.gate.set()
    await session.finalize()
    await session.aclose()
    events = [e async for e in session]
    assert [e.text for e in events if isinstance(e, Final)] == ["2060 ms"]
    assert engine.decoded == [2060]
