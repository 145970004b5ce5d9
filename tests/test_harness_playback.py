"""Twilio's playout of the bot's audio as the harness models it: which of it is the bot's voice,
and what a waiting step is told has changed."""

from __future__ import annotations

import math

import numpy as np

from ivr.audio import FRAME_BYTES, pcm16_to_ulaw
from ivr.harness.playback import TwilioPlayback, voiced_blocks


def tone(frames: float, level: float) -> bytes:
    n = int(frames * FRAME_BYTES)
    t = np.arange(n) / 8000.0
    return pcm16_to_ulaw((np.sin(2 * math.pi * 440 * t) * level * 32767).astype("<i2").tobytes())


LOUD, QUIET = 0.3, 0.001  # -10 dBFS and -60 dBFS: either side of the -45 dBFS line


def test_voiced_blocks_single_frames_and_longer_pieces_agree():
    assert voiced_blocks(tone(1, LOUD)) == [0]
    assert voiced_blocks(tone(1, QUIET)) == []
    assert voiced_blocks(tone(0.5, LOUD)) == [0]  # a short last piece
    piece = tone(1, QUIET) + tone(2, LOUD) + tone(1, QUIET) + tone(0.5, LOUD)
    assert voiced_blocks(piece) == [FRAME_BYTES, 2 * FRAME_BYTES, 4 * FRAME_BYTES]
    # The same audio a frame at a time says the same.
    frames = [piece[i : i + FRAME_BYTES] for i in range(0, len(piece), FRAME_BYTES)]
    assert [i for i, f in enumerate(frames) if voiced_blocks(f)] == [1, 2, 4]


def test_voice_changes_counts_new_stretches_and_cuts_not_growth():
    p = TwilioPlayback()
    p.on_media(0.0, tone(1, LOUD))
    assert p.voice_changes == 1
    p.on_media(0.0, tone(1, LOUD))  # queued right after: the same stretch, longer
    p.on_media(0.0, tone(1, QUIET))
    assert p.voice_changes == 1 and p.voiced == [[0, 2 * FRAME_BYTES]]
    p.on_media(0.0, tone(2, QUIET) + tone(1, LOUD))  # after a gap: a new stretch
    assert p.voice_changes == 2 and len(p.voiced) == 2
    p.on_clear(30.0)
    assert p.voice_changes == 3 and p.voiced == [[0, 30 * 8]]  # cut where the clear came
