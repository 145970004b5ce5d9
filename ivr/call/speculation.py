"""A reply started before the caller's turn was sure to be over (preemptive generation).

A turn-taking STT (Deepgram Flux) can say "probably done" (EagerEndOfTurn) some hundreds of ms
before "done" (EndOfTurn). The engine starts the brain at the first; the reply's outputs are
kept here, unspoken, until the turn really ends with the same words (then they are replayed at
once and the rest streams on) or the caller goes on (TurnResumed: the reply is dropped).
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ivr import loopbound
from ivr.providers.base import BrainOutput


def same_words(a: str, b: str) -> bool:
    def norm(t: str) -> list[str]:
        return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in t).split()

    return norm(a) == norm(b)


class Speculation:
    def __init__(self, text: str, outputs: AsyncIterator[BrainOutput], group: asyncio.TaskGroup) -> None:
        self.text = text
        self._items: list[BrainOutput] = []
        self._error: BaseException | None = None
        self._done = False
        self._changed = loopbound.Event()
        self.task = group.create_task(self._collect(outputs), name="speculation")

    async def _collect(self, outputs: AsyncIterator[BrainOutput]) -> None:
        try:
            async for out in outputs:
                self._items.append(out)
                self._changed.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to whoever replays it: the turn deals with it as usual
            self._error = exc
        finally:
            self._done = True
            self._changed.set()
            close = getattr(outputs, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    pass

    def matches(self, text: str) -> bool:
        return same_words(self.text, text)

    def cancel(self) -> None:
        self.task.cancel()

    async def replay(self) -> AsyncIterator[BrainOutput]:
        """What the brain said so far at once, then the rest as it comes."""
        i = 0
        try:
            while True:
                while i < len(self._items):
                    yield self._items[i]
                    i += 1
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return
                self._changed.clear()
                await self._changed.wait()
        finally:
            if not self._done:  # the turn was cut or cancelled: so is the rest of the reply
                self.task.cancel()
