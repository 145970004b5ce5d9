"""Conversation-engine latencies (`ivr bench call`).

- overhead: end-of-turn decision -> first outbound `media` frame, with an instant brain and TTS,
  so only ivr's own work is measured (the Call, the splitter, framing, the codec, the socket);
- greeting: `start` sent -> first `media` received, through a real server on loopback with the
  embedded engines (the greeting is cached at start-up);
- barge-in: first caller frame that contains speech -> `clear` received, while the bot reads its
  menu, with the embedded VAD; and the audible stop: speech start -> the bot quiet as the caller
  hears it (with `--pause starve` the bot stops feeding the line instead of clearing it);
- backchannel: murmurs ("okay", "uh-huh") over the bot: the bot must carry on where it stopped,
  so the figures are the audio heard twice and the longest pause, and how many became turns;
- response: end of caller speech -> first bot audio received, with the embedded engines, and
  where the time goes (endpointing + STT, brain, TTS, sending);
- paused: callers who pause 0.7-1.0 s mid-sentence (`tests/samples/paused`), one call each,
  against a bot that answers "Okay.": the share who hear the bot before their sentence is over,
  the end-of-turn model's decision times, the answer latency, and the process CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from ivr.providers.base import EndOfTurn
from ivr.providers.scripted import FixedBrain, InstantTts, ScriptedStt


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--turns", type=int, default=2000, help="turns for the overhead figure (default 2000)")
    p.add_argument("--calls", type=int, default=30, help="calls for the greeting figure (default 30)")
    p.add_argument("--barge-ins", type=int, default=20, help="barge-ins to measure (default 20)")
    p.add_argument("--answers", type=int, default=12, help="answers for the response figure (default 12)")
    p.add_argument("--backchannels", type=int, default=8, help="murmurs over the bot to measure (default 8)")
    p.add_argument("--pause", choices=["clear", "starve"], help="how the bot goes quiet for speech over it (default: the flow's, clear)")
    p.add_argument("--paused", default="tests/samples/paused", help="paused callers for the paused figure")
    p.add_argument("--only", choices=["overhead", "greeting", "barge-in", "backchannel", "response", "paused"], action="append")


def _pct(values: list[float]) -> str:
    if not values:
        return "no samples"
    v = np.asarray(values)
    return (
        f"p50 {np.percentile(v, 50):7.2f}  p95 {np.percentile(v, 95):7.2f}  p99 {np.percentile(v, 99):7.2f}"
        f"  max {v.max():7.2f} ms  (n={len(v)})"
    )


# --- overhead: instant providers, a line that only notes the time ----------------------------


@dataclass
class _TimingLine:
    """A Line without a socket: it builds each message as the real one would and notes when."""

    start: object
    first_media_at: float | None = None
    sent: int = 0
    ended_by_bot: bool = False
    transfer_to: object = None
    carrier: str = "twilio"
    control_id: str = ""
    log: object = None
    writer: object = None
    marks: list = field(default_factory=list)
    got_media: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def max_frames_per_message(self) -> int:
        return self.writer.max_frames_per_message

    async def send_frames(self, frames: list[bytes]) -> None:
        self.writer.media(b"".join(frames))
        if self.first_media_at is None:
            self.first_media_at = time.perf_counter()
            self.got_media.set()
        self.sent += 1

    async def send_mark(self, name: str) -> None:
        self.writer.mark(name)
        self.marks.append(name)

    async def send_clear(self) -> None:
        self.writer.clear()

    async def hang_up(self) -> None:
        pass

    async def leave(self) -> None:
        pass


async def overhead(turns: int) -> list[float]:
    import logging

    from ivr.call import Call
    from ivr.logs import CallLog
    from ivr.providers.registry import Providers
    from ivr.telephony.twilio import Mark, Start, MediaFormat, StreamWriter

    start = Start(1, "MZbench", "ACbench", "CAbench", ("inbound",), MappingProxyType({}), MediaFormat("audio/x-mulaw", 8000, 1))
    results = []
    turns_per_call = 10  # a long phone call, not an endless one: history stays call-sized
    for _ in range(max(1, turns // turns_per_call)):
        stt = ScriptedStt()
        providers = Providers(stt=stt, tts=InstantTts(ms_per_char=1), brain=FixedBrain())
        line = _TimingLine(start=start, log=CallLog(logging.getLogger("ivr.bench")), writer=StreamWriter("MZbench"))
        call = Call(line, providers)  # type: ignore[arg-type]
        await call.on_event(start)
        for i in range(turns_per_call):
            # Let the previous turn play out: echo its marks, as Twilio does once they played.
            while call._turn is None or not call._turn.done_generating:
                await asyncio.sleep(0)
            for name in line.marks:
                await call.on_event(Mark(0, name))
            line.marks.clear()
            line.first_media_at = None
            line.got_media.clear()
            t0 = time.perf_counter()
            stt.sessions[-1].push(EndOfTurn(text=f"are you open today {i}", at_ms=0))
            await line.got_media.wait()
            results.append((line.first_media_at - t0) * 1000)
        await call.close("bench")
    return results


# --- through a real server --------------------------------------------------------------------


def _start_server(**overrides):
    """The real app with the embedded engines, in its own thread (as `ivr demo` runs it)."""
    from ivr.call import CallFactory
    from ivr.commands.demo import _free_port, _Server
    from ivr.config import Settings
    from ivr.server import create_app

    settings = Settings.from_env(**overrides)
    port = _free_port()
    factory = CallFactory.from_settings(settings)
    server = _Server(create_app(settings, handler_factory=factory), port)
    return server, f"ws://127.0.0.1:{port}/media", factory


async def _call(url: str):
    import websockets

    from ivr.telephony.twilio import TwilioSender

    ws = await websockets.connect(url, max_size=None)
    sender = TwilioSender("MZ" + "%032x" % time.perf_counter_ns(), "CA" + "%032x" % time.perf_counter_ns(), "AC" + "0" * 32)
    await ws.send(sender.connected())
    return ws, sender


async def greeting(url: str, calls: int) -> list[float]:
    import orjson

    results = []
    for _ in range(calls):
        ws, sender = await _call(url)
        t0 = time.perf_counter()
        await ws.send(sender.start({"From": "+15550100000"}))
        while True:
            msg = orjson.loads(await ws.recv())
            if msg.get("event") == "media":
                results.append((time.perf_counter() - t0) * 1000)
                break
        await ws.send(sender.stop())
        await ws.close()
    return results


def _sample(name: str) -> bytes:
    from ivr.harness.audiofile import read_ulaw
    from ivr.harness.samples import HERE

    return read_ulaw(HERE / name)


async def barge_in(url: str, n: int) -> tuple[list[float], list[float], int]:
    """Replayed calls that talk over the menu at varying points; the harness times speech start
    (the first frame of the utterance above the noise floor) -> `clear` received, and -> the bot
    quiet as heard; and counts bot frames received after the clear."""
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.plan import After, CallPlan, Hangup, Say
    from ivr.harness.report import build_report
    from ivr.harness.run import replay

    speech = _sample("where-are-you.wav")
    clears, stops, leaked = [], [], 0
    for i in range(n):
        plan = CallPlan(
            name=f"barge-in-{i}", kind="script", source="bench",
            steps=[Say(speech, "Where are you located?", After("bot_speaking", 1.0 + 0.37 * (i % 8))), Hangup(After("pause", 1.0))],
        )
        report = build_report(await replay(plan, ReplayOptions(url=url, max_call_s=30)))
        for b in report["barge_ins"][:1]:
            if b["latency_ms"] is not None:
                clears.append(b["latency_ms"])
            if b["audible_stop_latency_ms"] is not None:
                stops.append(b["audible_stop_latency_ms"])
            leaked += b["frames_after_clear"]
    return clears, stops, leaked


#: Said by the harness's piper voice. Not "Mm-hmm.": piper reads it as a word ("MMO"), which is
#: a turn to answer, not a murmur.
MURMURS = ("Okay.", "Uh-huh.", "Yeah.", "Right.")


async def backchannel(url: str, n: int, factory) -> dict:
    """Replayed calls that murmur over the menu at varying points (synthesised murmurs)."""
    import tempfile
    from pathlib import Path

    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.report import build_report
    from ivr.harness.run import replay
    from ivr.harness.sources import load_script

    repeated, pauses, stops, turns, paused = [], [], [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            path = Path(tmp) / f"murmur-{i}.yaml"
            path.write_text(
                f"name: murmur-{i}\nsteps:\n  - say: \"{MURMURS[i % len(MURMURS)]}\"\n"
                f"    after: bot_speaking {1.5 + 0.53 * (i % 7):.2f}\n  - hangup:\n    after: bot_silent 1.0\n"
            )
            known = set(map(id, factory.recent))
            report = build_report(await replay(await load_script(path), ReplayOptions(url=url, max_call_s=40)))
            repeated.append(report["bot"]["repeated_ms"])
            for b in report["barge_ins"][:1]:
                paused += 1
                if b["quiet_ms"] is not None:
                    pauses.append(b["quiet_ms"])
                if b["audible_stop_latency_ms"] is not None:
                    stops.append(b["audible_stop_latency_ms"])
            for call in [c for c in factory.recent if id(c) not in known]:
                turns += sum(1 for role, _ in call.history if role == "caller")
    return {"repeated": repeated, "pauses": pauses, "stops": stops, "turns": turns, "paused": paused, "calls": n}


async def response(url: str, n: int, factory) -> tuple[list[float], list]:
    """Replayed calls asking questions after the bot falls silent; the harness times the end of
    the caller's speech -> the first answer audio played; the server's timings split it."""
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.plan import After, CallPlan, Hangup, Say
    from ivr.harness.report import build_report
    from ivr.harness.run import replay

    questions = [("hours-question.wav", "Hi. What time are you open?"), ("where-are-you.wav", "Where are you located?")]
    results: list[float] = []
    timings: list = []
    for _attempt in range(max(1, n)):  # each call gives up to 4 answers; never loop forever
        if len(results) >= n:
            break
        steps = [Say(_sample(f), t, After("bot_silent", 0.8)) for f, t in questions * 2]
        plan = CallPlan(name="response", kind="script", source="bench", steps=steps + [Hangup(After("bot_silent", 0.5))])
        known = set(map(id, factory.recent))
        report = build_report(await replay(plan, ReplayOptions(url=url, max_call_s=120)))
        results += [t["response_latency_ms"] for t in report["turns"] if t["response_latency_ms"] is not None]
        for call in [c for c in factory.recent if id(c) not in known]:
            timings += call.stats.answers
    return results, timings


async def paused(url: str, directory: str, factory) -> dict:
    """One call per paused caller: says the sentence once the greeting is over, hangs up once
    the answer has begun. A caller is cut off when bot audio starts inside their sentence."""
    from ivr.bench.turns import load_paused
    from ivr.harness.emulator import ReplayOptions
    from ivr.harness.plan import After, CallPlan, Hangup, Say
    from ivr.harness.report import build_report
    from ivr.harness.run import replay

    result: dict = {"calls": 0, "cut": [], "latency": [], "decisions": [], "cpu_s": [], "why": []}
    for c in load_paused(directory):
        plan = CallPlan(name=c.name, kind="script", source="bench",
                        steps=[Say(c.ulaw, c.text, After("bot_silent", 0.5)), Hangup(After("bot_speaking", 0.3, 10.0))])
        known = set(map(id, factory.recent))
        cpu = time.process_time()
        report = build_report(await replay(plan, ReplayOptions(url=url, max_call_s=30)))
        result["cpu_s"].append(time.process_time() - cpu)
        result["calls"] += 1
        bot = report["bot"]["speech"]
        for turn in report["turns"][:1]:
            start, end = turn["caller_speech_start_ms"], turn["caller_speech_end_ms"]
            if any(start < a < end for a, _ in bot):
                result["cut"].append(c.name)
            elif turn["response_latency_ms"] is not None:
                result["latency"].append(turn["response_latency_ms"])
        decisions = [d for x in factory.recent if id(x) not in known for d in getattr(x._stt, "decisions", [])]
        result["decisions"] += decisions
        if decisions and result["cut"] and result["cut"][-1] == c.name:
            result["why"].append((c.name, [(d.text, d.probability, d.complete, d.heard_ms) for d in decisions]))
    return result


def _paused_summary(r: dict, gated: bool) -> str:
    from ivr.bench.turns import median

    n, cut = r["calls"], r["cut"]
    lines = [f"  paused    callers cut off mid-sentence (pauses 0.7-1.0 s)   : {len(cut)} of {n}"
             + (f" ({', '.join(cut)})" if cut else "") + ("" if gated else "  [turn model off]")]
    lines.append(f"            end of sentence -> first answer played         : {_pct(r['latency'])}")
    d = r["decisions"]
    asked = [x.compute_ms for x in d if x.probability is not None]
    if d:
        lines.append(f"            turn model: {len(d)} decisions; model time median {median(asked)}"
                     f" (p95 {np.percentile(asked, 95) if asked else 0:.0f} ms); candidate end -> decision median"
                     f" {median([x.wait_ms for x in d])}; judged finished {sum(x.complete for x in d)}"
                     f" ({sum(x.question for x in d)} questions, ended at once), held {sum(not x.complete for x in d)}"
                     f" ({sum(x.unfinished_text for x in d)} by the last words)")
    for name, decisions in r.get("why", []):
        lines.append(f"            {name}: " + "; ".join(
            f"{text!r} p={'-' if p is None else f'{p:.2f}'} ({heard} ms after) {'ended' if done else 'held'}"
            for text, p, done, heard in decisions))
    lines.append(f"            process CPU per call (server + harness): median {statistics.median(r['cpu_s']):.2f} s"
                 + (f"; the turn model's CPU {sum(x.cpu_ms for x in d) / 1000 / max(n, 1):.3f} s" if asked else ""))
    return "\n".join(lines)


def _breakdown(timings: list) -> str:
    parts = {"endpointing + STT": [], "brain": [], "TTS + send": []}
    for t in timings:
        if t.speech_end_at is None or t.brain_first_at is None or t.first_audio_at is None:
            continue
        parts["endpointing + STT"].append((t.end_of_turn_at - t.speech_end_at) * 1000)
        parts["brain"].append((t.brain_first_at - t.end_of_turn_at) * 1000)
        parts["TTS + send"].append((t.first_audio_at - t.brain_first_at) * 1000)
    return "\n".join(
        f"            {name:<18}: median {statistics.median(v):7.1f} ms" for name, v in parts.items() if v
    )


def run(args: argparse.Namespace) -> int:
    from ivr import logs

    logs.setup("warning")
    only = set(args.only or ["overhead", "greeting", "barge-in", "backchannel", "response", "paused"])
    print("ivr bench call" + "".join(f" --only {o}" for o in args.only or []))
    if "overhead" in only:
        r = asyncio.run(overhead(args.turns))
        print(f"  overhead  end of turn -> first media frame (instant brain+TTS) : {_pct(r)}")
    if only & {"greeting", "barge-in", "backchannel", "response"}:
        server, url, factory = _start_server()
        if args.pause:
            from dataclasses import replace

            factory.options = replace(factory.options, pause=args.pause)
        print(f"  (bot pauses by {factory.options.pause}, lead {factory.options.playout_lead_ms} ms)")
        with server:
            if "greeting" in only:
                r = asyncio.run(greeting(url, args.calls))
                print(f"  greeting  start -> first media frame (embedded engines)    : {_pct(r)}")
            if "barge-in" in only:
                clears, stops, leaked = asyncio.run(barge_in(url, args.barge_ins))
                print(f"  barge-in  first speech frame -> clear (embedded VAD)       : {_pct(clears)}")
                print(f"            first speech frame -> bot quiet, as heard        : {_pct(stops)}")
                print(f"            bot frames after the clear                       : {leaked}")
            if "backchannel" in only:
                b = asyncio.run(backchannel(url, args.backchannels, factory))
                print(f"  backchannel  murmur over the bot (embedded VAD+STT), {b['calls']} calls, {b['paused']} paused the bot")
                print(f"            audio heard twice                                : total {sum(b['repeated']):.0f} ms, max {max(b['repeated'], default=0):.0f} ms in a call")
                print(f"            pause, bot quiet -> bot speaking again            : {_pct(b['pauses'])}")
                print(f"            first speech frame -> bot quiet, as heard        : {_pct(b['stops'])}")
                print(f"            murmurs taken for a turn                         : {b['turns']}")
            if "response" in only:
                r, timings = asyncio.run(response(url, args.answers, factory))
                print(f"  response  end of speech -> first answer played (embedded)  : {_pct(r)}")
                print(_breakdown(timings))
    if "paused" in only:
        from importlib.resources import files

        server, url, factory = _start_server(flow=str(files("ivr.bench") / "turns_flow.yaml"))
        with server:
            r = asyncio.run(paused(url, args.paused, factory))
        gated = hasattr(factory.providers.stt, "turn_options")
        print(_paused_summary(r, gated))
    return 0
