"""Providers that do no work: speech events pushed by a driver, a fixed brain, instant audio.

They isolate the conversation engine for its benchmarks and tests: whatever time is measured
through them is ivr's own.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from ivr import loopbound
from ivr.providers.base import AudioChunk, BrainOutput, CallContext, CallerInput, SttEvent, TextDelta

_END = object()


class ScriptedSttSession:
    """Yields the events its driver pushes; `speaking` is whatever the driver says."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = loopbound.Queue()
        self.audio = bytearray()
        self.speaking = True

    def push(self, event: SttEvent) -> None:
        self.queue.put_nowait(event)

    async def send(self, ulaw: bytes) -> None:
        self.audio += ulaw

    async def finalize(self) -> None:
        pass

    async def aclose(self) -> None:
        self.queue.put_nowait(_END)

    def __aiter__(self) -> "ScriptedSttSession":
        return self

    async def __anext__(self) -> SttEvent:
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        return item


class ScriptedStt:
    def __init__(self) -> None:
        self.sessions: list[ScriptedSttSession] = []

    async def load(self) -> None:
        pass

    async def open(self, call: CallContext | None = None) -> ScriptedSttSession:
        session = ScriptedSttSession()
        self.sessions.append(session)
        return session


class FixedBrainSession:
    speculative = False

    def __init__(self, greeting: str, answer: Callable[[CallerInput], list[BrainOutput]]) -> None:
        self._greeting = greeting
        self._answer = answer
        self.inputs: list[tuple[list, CallerInput]] = []

    async def greeting(self):
        yield TextDelta(self._greeting)

    async def respond(self, history, caller: CallerInput):
        self.inputs.append((list(history), caller))
        for out in self._answer(caller):
            yield out

    async def aclose(self) -> None:
        pass


class FixedBrain:
    """Greets with `greeting`; answers each input with `answer(input)` (default: one sentence)."""

    def __init__(self, greeting: str = "Hi. ", answer: Callable[[CallerInput], list[BrainOutput]] | None = None) -> None:
        self.greeting = greeting
        self.answer = answer or (lambda caller: [TextDelta("Sure, we are open from seven until three. Anything else? ")])
        self.sessions: list[FixedBrainSession] = []

    async def load(self) -> None:
        pass

    async def open(self, call: CallContext) -> FixedBrainSession:
        session = FixedBrainSession(self.greeting, self.answer)
        self.sessions.append(session)
        return session


class InstantTtsStream:
    """Each piece at once as `ms_per_char` of 8 kHz mu-law per character (a provider's ulaw_8000)."""

    def __init__(self, ms_per_char: int) -> None:
        self.queue: asyncio.Queue = loopbound.Queue()
        self.n = 0
        self.ms_per_char = ms_per_char
        self.cancelled = False

    async def push(self, text: str) -> int:
        i = self.n
        self.n += 1
        self.queue.put_nowait(AudioChunk(i, b"\x55" * (8 * self.ms_per_char * max(1, len(text))), 8000, "ulaw", True))
        return i

    async def end(self) -> None:
        self.queue.put_nowait(_END)

    async def cancel(self) -> None:
        self.cancelled = True
        self.queue.put_nowait(_END)

    def __aiter__(self) -> "InstantTtsStream":
        return self

    async def __anext__(self) -> AudioChunk:
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)
            raise StopAsyncIteration
        return item


class InstantTts:
    sample_rate = 8000
    encoding = "ulaw"

    def __init__(self, ms_per_char: int = 4) -> None:
        self.ms_per_char = ms_per_char
        self.streams: list[InstantTtsStream] = []

    async def load(self) -> None:
        pass

    def stream(self) -> InstantTtsStream:
        s = InstantTtsStream(self.ms_per_char)
        self.streams.append(s)
        return s
