"""Pure audio functions: G.711 mu-law, resampling, 20 ms framing. No I/O, no asyncio."""

from ivr.audio.framing import FRAME_BYTES, FRAME_MS, SAMPLE_RATE, Framer
from ivr.audio.g711 import ULAW_SILENCE, pcm16_to_ulaw, ulaw_silence, ulaw_to_pcm16
from ivr.audio.resample import SUPPORTED_RATES, Resampler, group_delay_ms, resample
from ivr.audio.outbound import PhoneEncoder

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SAMPLE_RATE",
    "SUPPORTED_RATES",
    "ULAW_SILENCE",
    "Framer",
    "PhoneEncoder",
    "Resampler",
    "group_delay_ms",
    "pcm16_to_ulaw",
    "resample",
    "ulaw_silence",
    "ulaw_to_pcm16",
]
