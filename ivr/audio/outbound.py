"""PCM at any supported rate -> 20 ms frames of 8 kHz mu-law, ready for the telephone."""

from ivr.audio.framing import FRAME_BYTES, SAMPLE_RATE, Framer
from ivr.audio.g711 import pcm16_to_ulaw
from ivr.audio.resample import Resampler


class PhoneEncoder:
    """Resample (if needed), encode to mu-law and cut into exact 160-byte frames.

    One per bot audio stream; `push()` returns the frames completed by the chunk, `flush()` the
    padded last one.
    """

    __slots__ = ("_resampler", "_framer", "in_rate")

    def __init__(self, in_rate: int) -> None:
        self.in_rate = in_rate
        self._resampler = Resampler(in_rate, SAMPLE_RATE)
        self._framer = Framer(FRAME_BYTES)

    def push(self, pcm: bytes) -> list[bytes]:
        pcm8 = self._resampler.process(pcm)
        if not pcm8:
            return []
        return self._framer.push(pcm16_to_ulaw(pcm8))

    def push_ulaw(self, ulaw: bytes) -> list[bytes]:
        """Audio that is already 8 kHz mu-law (e.g. a provider's ulaw_8000) is only framed."""
        return self._framer.push(ulaw)

    def flush(self) -> list[bytes]:
        tail = self._resampler.flush()
        frames = self._framer.push(pcm16_to_ulaw(tail)) if tail else []
        return frames + self._framer.flush(pad=True)

    def reset(self) -> None:
        """Drop everything held back (barge-in): nothing of the old stream may leak out later."""
        self._resampler.reset()
        self._framer.reset()
