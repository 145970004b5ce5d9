"""Rendered prompts as 8 kHz mu-law frames, shared by every call of the process, so the greeting
and the flow's fixed replies start with no synthesis delay."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from ivr.audio import FRAME_BYTES


class PromptCache:
    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, ...]] = OrderedDict()
        self._bytes = 0

    def get(self, text: str) -> tuple[bytes, ...] | None:
        frames = self._items.get(text)
        if frames is not None:
            self._items.move_to_end(text)
        return frames

    def put(self, text: str, frames: Iterable[bytes]) -> None:
        frames = tuple(frames)
        if text in self._items or not frames:
            return
        self._items[text] = frames
        self._bytes += len(frames) * FRAME_BYTES
        while self._bytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old) * FRAME_BYTES
