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


def test_one_message_of_many_frames_plays_as_those_frames_one_by_one():
    # Twilio takes outbound media of any size and plays it in order: a bot that sends a top-up
    # as one message must be heard, marked and cut exactly as if it sent each frame.
    audio = tone(3, LOUD) + tone(2, QUIET) + tone(4, LOUD)
    frames = [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
    split = 5 * FRAME_BYTES
    by_frame, by_message = TwilioPlayback(), TwilioPlayback()
    for p, (piece_a, piece_b) in ((by_frame, (frames[:5], frames[5:])), (by_message, ([audio[:split]], [audio[split:]]))):
        for payload in piece_a:
            p.on_media(10.0, payload)
        assert p.on_mark(10.0, "a") == []
        for payload in piece_b:
            p.on_media(10.0, payload)
        assert p.on_mark(10.0, "b") == []
    for p in (by_frame, by_message):
        assert [m.due_ms for m in p.marks] == [110.0, 190.0]
        assert p.voiced == [[80, 80 + 3 * FRAME_BYTES], [80 + 5 * FRAME_BYTES, 80 + 9 * FRAME_BYTES]]
        assert [m.name for m in p.due_marks(110.0)] == ["a"]
        assert [m.name for m in p.on_clear(150.0)] == ["b"]  # a clear halfway through the second message
    assert np.array_equal(by_frame.heard_pcm(2000), by_message.heard_pcm(2000))
    assert by_message.media[1].kept == (150 - 110) * 8 and by_message.media[1].cut
