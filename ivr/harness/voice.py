"""The caller's side of the line: what goes into each 20 ms media frame.

A real phone line never stops sending media, so between utterances the caller sends silence.
An utterance queued with `say()` starts in the next frame sent; its `done` event fires when its
last byte has gone out, so a call script can wait for it on the call clock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

from ivr.audio import FRAME_BYTES, ULAW_SILENCE
from ivr.harness.speech import samples_to_ms, speech_segments, trimmed_span, ulaw_pcm

SILENT_FRAME = ULAW_SILENCE * FRAME_BYTES


@dataclass(eq=False)
class Utterance:
    """Caller audio sent as one piece. `turns` holds the speech inside it, as call-clock ms."""

    ulaw: bytes = field(repr=False)
    text: str | None = None
    #: "one": the whole utterance is one caller turn (scripts); "detect": find turns by energy.
    segmentation: str = "one"
    label: str = ""
    start_sample: int | None = None  # where its first byte went out on the caller track
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def end_sample(self) -> int | None:
        return None if self.start_sample is None else self.start_sample + len(self.ulaw)

    def speech_spans_ms(self) -> list[tuple[float, float]]:
        """Caller speech inside this utterance on the call clock (empty if never sent)."""
        if self.start_sample is None:
            return []
        base = self.start_sample
        return [(samples_to_ms(base + a), samples_to_ms(base + b)) for a, b in _speech_in(self.ulaw, self.segmentation)]


@lru_cache(maxsize=256)
def _speech_in(ulaw: bytes, segmentation: str) -> tuple[tuple[int, int], ...]:
    """Speech in a piece of caller audio, in samples from its start. Cached: a load run says the
    same few recordings thousands of times (a bytes object keeps its hash once computed)."""
    pcm = ulaw_pcm(ulaw)
    if segmentation == "one":
        span = trimmed_span(pcm)
        return (span,) if span else ()
    return tuple(speech_segments(pcm))


class CallerVoice:
    def __init__(self) -> None:
        self.utterances: list[Utterance] = []
        self._queue: deque[Utterance] = deque()
        self._offset = 0  # bytes of the head utterance already sent

    def say(self, utterance: Utterance) -> Utterance:
        self.utterances.append(utterance)
        self._queue.append(utterance)
        return utterance

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def next_frame(self, position: int) -> bytes:
        """The 160 bytes to send at caller-track sample `position`."""
        if not self._queue:
            return SILENT_FRAME
        head, offset = self._queue[0], self._offset
        if offset and offset + FRAME_BYTES < len(head.ulaw):
            # The middle of an utterance, most frames of it: one slice, no assembling.
            self._offset = offset + FRAME_BYTES
            return head.ulaw[offset : offset + FRAME_BYTES]
        out = bytearray()
        while self._queue and len(out) < FRAME_BYTES:
            head = self._queue[0]
            if self._offset == 0:
                head.start_sample = position + len(out)
            take = head.ulaw[self._offset : self._offset + FRAME_BYTES - len(out)]
            out += take
            self._offset += len(take)
            if self._offset >= len(head.ulaw):
                self._queue.popleft()
                self._offset = 0
                head.done.set()
        if len(out) < FRAME_BYTES:
            out += ULAW_SILENCE * (FRAME_BYTES - len(out))
        return bytes(out)

    def abandon(self) -> None:
        """Hang-up: whatever was not sent never will be."""
        for utterance in self._queue:
            utterance.done.set()
        self._queue.clear()
        self._offset = 0
