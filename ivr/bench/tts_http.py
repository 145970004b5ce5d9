"""`ivr bench tts-http`: what ivr adds between a cloud voice's first byte and the caller's ear.

For each request-per-piece voice (OpenAI speech raw pcm, OpenAI speech over SSE, Azure), its fake
from the test suite (tests/fakes, in a source checkout) answers with a fixed `--tts-ms` delay
before the first byte. A replayed call through the real server asks a question N times (Deepgram
and OpenAI chat are fakes too); for each answer

    added = first media frame of the answer sent to Twilio - first audio byte written by the fake

which is loopback transit, the client (openai SDK or httpx) reading and parsing the response
(base64 and JSON for SSE), the pipeline's queue, resampling 24 kHz to 8 kHz and mu-law encoding
(OpenAI) or framing alone (Azure), and the send on the media socket. The fakes run in this process,
so both times are on one clock. Goal: under 5 ms at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from ivr.bench.questions import percentile, question_call

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("openai", "openai-sse", "azure")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", type=int, default=30, help="answers to measure per voice (default 30)")
    p.add_argument("--tts-ms", type=float, default=150, help="fakes' delay before the first audio byte (default 150)")
    p.add_argument("--speed", type=float, default=2.0, help="harness playback speed (default 2)")
    p.add_argument("--only", choices=VARIANTS, action="append", help="measure only this voice (repeatable)")



def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from fakes.azure_tts import FakeAzureTts
        from fakes.deepgram import FakeDeepgram
        from fakes.openai_api import FakeOpenAI, Reply
        from fakes.openai_tts import FakeOpenAITts
        from live_server import serve
    except ImportError:
        print("ivr bench tts-http needs a source checkout (it uses tests/fakes)", file=sys.stderr)
        return 2
    from ivr.call import CallFactory
    from ivr.config import Settings
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.run import replay_file
    from ivr.providers.registry import build
    from ivr.server import create_app

    with tempfile.TemporaryDirectory(prefix="ivr-bench-tts-http-") as tmp:
        flow, plan = question_call(Path(tmp), args.answers)
        delay = args.tts_ms / 1000
        results: dict[str, list[float]] = {}
        for variant in args.only or VARIANTS:
            counter = iter(range(1, 1_000_000))
            # A different reply each time: a repeated one would come from the prompt cache, not the voice.
            brain = FakeOpenAI("sk-bench", responder=lambda body: Reply(f"Answer {next(counter)}, we open at seven."))
            voice = FakeAzureTts("az-bench", first_byte_delay_s=delay) if variant == "azure" else \
                FakeOpenAITts("sk-bench", first_byte_delay_s=delay)
            with FakeDeepgram("dg-bench", default_text="what time are you open") as dg, \
                    serve(brain.app) as brain_url, serve(voice.app) as voice_url:
                env = {"DEEPGRAM_API_KEY": "dg-bench", "IVR_DEEPGRAM_URL": dg.url, "IVR_DEEPGRAM_ENDPOINTING_MS": "700",
                       "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": brain_url + "/v1", "IVR_FLOW": str(flow)}
                if variant == "azure":
                    env.update({"IVR_TTS": "azure", "AZURE_SPEECH_KEY": "az-bench", "IVR_AZURE_TTS_URL": voice_url + "/cognitiveservices/v1"})
                else:
                    env.update({"IVR_TTS": "openai", "OPENAI_TTS_BASE_URL": voice_url + "/v1",
                                "OPENAI_TTS_STREAM_FORMAT": "sse" if variant == "openai-sse" else "audio"})
                settings = Settings.from_env(env)
                factory = CallFactory(build(settings))
                calls: list = []
                app = create_app(settings, handler_factory=_Recording(factory, calls))
                with serve(app) as base:
                    url = base.replace("http", "ws") + "/media"
                    asyncio.run(replay_file(plan, ReplayOptions(url=url, speed=args.speed, max_call_s=600), plan.parent / variant))
            first_byte = {r.body.get("input", r.body.get("text", "")).strip(): r.first_byte_at for r in voice.requests}
            added = []
            for call in calls:
                for role, turn in call.history:
                    # The greeting is played from the prompt cache filled at start-up: not a measurement.
                    if role != "bot" or turn.number == 1 or turn.first_audio_at is None or not turn.ledger.pieces:
                        continue
                    sent = first_byte.get(turn.ledger.pieces[0].text.strip())
                    if sent is not None and sent <= turn.first_audio_at:
                        added.append((turn.first_audio_at - sent) * 1000)
            results[variant] = added
        print(f"request-per-piece voices, fakes on 127.0.0.1 with the first byte {args.tts_ms:.0f} ms after the request; "
              "added latency = first media frame sent - first audio byte written by the fake")
        ok = True
        for variant, added in results.items():
            if not added:
                print(f"{variant:11s} no answers matched", file=sys.stderr)
                ok = False
                continue
            print(f"{variant:11s} answers {len(added):3d}: median {statistics.median(added):.2f} ms, "
                  f"p90 {percentile(added, 90):.2f} ms, p99 {percentile(added, 99):.2f} ms, max {max(added):.2f} ms")
            print(f"{'':11s} each answer, in order (ms): {' '.join(f'{v:.1f}' for v in added)}")
        return 0 if ok else 1


class _Recording:
    """The factory, keeping each call for its timings."""

    def __init__(self, factory, calls: list) -> None:
        self._factory, self._calls = factory, calls

    def __call__(self, line):
        call = self._factory(line)
        self._calls.append(call)
        return call

    async def startup(self) -> None:
        await self._factory.startup()

    def __getattr__(self, name):
        return getattr(self._factory, name)
