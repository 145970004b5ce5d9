"""G.711 mu-law <-> 16-bit little-endian PCM (the only format Twilio Media Streams carry)."""

from ivr.audio._audioop import audioop

#: One mu-law byte of digital silence (the encoding of PCM 0).
ULAW_SILENCE = b"\xff"


def ulaw_to_pcm16(ulaw: bytes) -> bytes:
    """Decode mu-law bytes to 16-bit signed little-endian PCM (two bytes per input byte)."""
    return audioop.ulaw2lin(ulaw, 2)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode 16-bit signed little-endian PCM to mu-law (one byte per sample)."""
    return audioop.lin2ulaw(pcm, 2)


def ulaw_silence(n_bytes: int) -> bytes:
    return ULAW_SILENCE * n_bytes
