"""The caller's voice as 20 ms frames: every byte of every utterance once, in order, silence
between and after, each utterance placed and marked done when its last byte goes."""

from __future__ import annotations

import random

from ivr.audio import FRAME_BYTES, ULAW_SILENCE
from ivr.harness.voice import CallerVoice, Utterance


def test_frames_carry_the_utterances_back_to_back_then_silence():
    rng = random.Random(7)
    # Random lengths, and lengths that end on and beside frame boundaries.
    cases = [[rng.randrange(1, 700) for _ in range(3)] for _ in range(50)] + [[160, 320, 161], [159, 1, 480]]
    for lengths in cases:
        voice = CallerVoice()
        utterances = [Utterance(bytes(rng.randrange(256) for _ in range(n))) for n in lengths]
        for u in utterances:
            voice.say(u)
        wire, position = bytearray(), 0
        while voice.busy:
            frame = voice.next_frame(position)
            assert isinstance(frame, bytes) and len(frame) == FRAME_BYTES
            wire += frame
            position += FRAME_BYTES
        whole = b"".join(u.ulaw for u in utterances)
        assert bytes(wire) == whole + ULAW_SILENCE * (len(wire) - len(whole))
        assert [u.start_sample for u in utterances] == [sum(len(v.ulaw) for v in utterances[:i]) for i in range(3)]
        assert all(u.done.is_set() for u in utterances)
        assert voice.next_frame(position) == ULAW_SILENCE * FRAME_BYTES
