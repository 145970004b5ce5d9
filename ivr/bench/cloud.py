"""`ivr bench cloud`: ivr's own share of the response latency with the cloud adapters.

The three fakes from the test suite (tests/fakes, in a source checkout) run on 127.0.0.1 with
fixed delays: Deepgram sends each final `--stt-ms` late, OpenAI its first token `--llm-ms` late,
ElevenLabs its first audio `--tts-ms` late. A replayed call asks a question N times through the
real server; for each answer

    ivr share = (first reply frame sent to Twilio - Deepgram final sent)
                - (OpenAI first token sent - its request received)
                - (ElevenLabs first audio sent - its first text received)

so what remains is ivr's own work: parsing the final, the turn decision, the request, the
clause split, the TTS request, framing and sending, plus loopback transit. The fakes run in this
process (their timestamps share the server's clock); their own work counts against ivr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import textwrap
from pathlib import Path

from ivr.bench.questions import percentile, question_call

REPO = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--answers", type=int, default=30, help="answers to measure (default 30)")
    p.add_argument("--stt-ms", type=float, default=150, help="Deepgram fake: final delay (default 150)")
    p.add_argument("--llm-ms", type=float, default=300, help="OpenAI fake: first token delay (default 300)")
    p.add_argument("--tts-ms", type=float, default=150, help="ElevenLabs fake: first audio delay (default 150)")
    p.add_argument("--speed", type=float, default=1.0, help="harness playback speed (default real time)")



def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from fakes.deepgram import FakeDeepgram
        from fakes.elevenlabs import FakeElevenLabs
        from fakes.openai_api import FakeOpenAI, Reply
        from live_server import serve
    except ImportError:
        print("ivr bench cloud needs a source checkout (it uses tests/fakes)", file=sys.stderr)
        return 2
    from ivr.call import CallFactory
    from ivr.config import Settings
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.run import replay_file
    from ivr.providers.registry import build
    from ivr.server import create_app

    flow, plan = question_call("ivr-bench-cloud-", args.answers)

    counter = iter(range(1, 1_000_000))
    # A different reply each time: a repeated one would come from the prompt cache, not the TTS.
    openai = FakeOpenAI("sk-bench", responder=lambda body: Reply(f"Answer {next(counter)}: we open at seven."),
                        first_token_delay_s=args.llm_ms / 1000)
    shares: list[float] = []
    totals: list[float] = []
    with FakeDeepgram("dg-bench", default_text="what time are you open", final_delay_s=args.stt_ms / 1000) as dg, \
            FakeElevenLabs("el-bench", "v", first_audio_delay_s=args.tts_ms / 1000) as el, \
            serve(openai.app) as openai_url:
        settings = Settings.from_env({
            "DEEPGRAM_API_KEY": "dg-bench", "IVR_DEEPGRAM_URL": dg.url, "IVR_DEEPGRAM_ENDPOINTING_MS": "700",
            "ELEVENLABS_API_KEY": "el-bench", "ELEVENLABS_VOICE_ID": "v", "IVR_ELEVENLABS_URL": el.url,
            "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": openai_url + "/v1", "IVR_FLOW": str(flow),
        })
        factory = CallFactory(build(settings))
        calls: list = []
        app = create_app(settings, handler_factory=_Recording(factory, calls))
        with serve(app) as base:
            url = base.replace("http", "ws") + "/media"
            asyncio.run(replay_file(plan, ReplayOptions(url=url, speed=args.speed, max_call_s=600), plan.parent / "out"))
        answers = [t for call in calls for t in call.stats.answers if t.first_audio_at is not None]
        finals = [t for t, _ in dg.finals_sent]
        contexts = sorted((c for c in el.contexts.values() if c.first_audio_at and c.first_text_at),
                          key=lambda c: c.first_text_at)
        for answer in answers:
            final = max((t for t in finals if t <= answer.end_of_turn_at), default=None)
            llm = max(((r, s) for r, s in openai.timings if r >= (final or 0) and s <= answer.first_audio_at), default=None)
            ctx = next((c for c in contexts if llm and c.first_text_at >= llm[1] and c.first_audio_at <= answer.first_audio_at), None)
            if final is None or llm is None or ctx is None:
                continue
            total = answer.first_audio_at - final
            share = total - (llm[1] - llm[0]) - (ctx.first_audio_at - ctx.first_text_at)
            totals.append(total * 1000)
            shares.append(share * 1000)
    if not shares:
        print("no answers could be matched to the fakes' timings", file=sys.stderr)
        return 1
    print(textwrap.dedent(f"""\
        cloud adapters, fakes on 127.0.0.1 with fixed delays: STT final +{args.stt_ms:.0f} ms, first token {args.llm_ms:.0f} ms, first audio {args.tts_ms:.0f} ms
        answers measured: {len(shares)}
        from Deepgram's final to the first reply frame sent: median {statistics.median(totals):.1f} ms, p99 {percentile(totals, 99):.1f} ms
        ivr's own share (minus the fakes' LLM and TTS waits): median {statistics.median(shares):.1f} ms, p90 {percentile(shares, 90):.1f} ms, p99 {percentile(shares, 99):.1f} ms, max {max(shares):.1f} ms
        each answer's share, in order (ms): {' '.join(f'{v:.0f}' for v in shares)}"""))
    return 0


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
