"""Cut a mu-law stream of any chunk sizes into exact 20 ms frames, carrying the remainder."""

from ivr.audio.g711 import ULAW_SILENCE

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 mu-law bytes


class Framer:
    """Accumulates mu-law bytes and hands out whole 160-byte frames.

    Chunks that are already exact frames pass through without being copied.
    """

    __slots__ = ("_pending", "frame_bytes")

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back until the next push completes a frame."""
        return len(self._pending)

    def push(self, ulaw: bytes) -> list[bytes]:
        n = self.frame_bytes
        if not self._pending and len(ulaw) == n:
            return [ulaw]
        self._pending += ulaw
        whole = len(self._pending) - len(self._pending) % n
        if not whole:
            return []
        buf = bytes(self._pending[:whole])
        del self._pending[:whole]
        return [buf[i : i + n] for i in range(0, whole, n)]

    def flush(self, pad: bool = True) -> list[bytes]:
        """Return the remainder as a last frame, padded with silence unless `pad` is false."""
        if not self._pending:
            return []
        rest = bytes(self._pending)
        self._pending.clear()
        if pad:
            rest += ULAW_SILENCE * (self.frame_bytes - len(rest))
        return [rest]

    def reset(self) -> None:
        self._pending.clear()
