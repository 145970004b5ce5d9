"""A whole scripted call against a conversational fake bot: turns, latencies, barge-in, outputs."""

from __future__ import annotations

import asyncio
import json
import wave
from importlib.resources import files

import jsonschema
import pytest

from fakebot import FakeBot, tone_ulaw
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import After, CallPlan, Dtmf, Hangup, Say
from ivr.harness.report import build_report
from ivr.harness.run import write_outputs
from ivr.harness.summary import format_summary

SCHEMA = json.loads(files("ivr.harness").joinpath("report.schema.json").read_text())
#: The call clock's speed: slow enough that a busy machine's stalls (tens of ms of wall time)
#: stay inside the tolerances below, which are in call time.
SPEED = 2.0


def conversational_bot(leak_after_clear: bool = False):
    """Greets, answers each caller turn after 200 ms of silence, stops at once on a barge-in.
    Each utterance goes as one media message: in 20 ms pieces, a stall of the test machine in the
    middle of sending would leave a gap the caller hears as the bot pausing."""

    async def behaviour(bot):
        await bot.send_audio(tone_ulaw(1000, 500), piece=8000)
        await bot.mark("greeting")
        speech = await bot.wait_caller_speech()
        end = await bot.wait_caller_silence(speech)
        await bot.send_audio(tone_ulaw(3000, 500), piece=24000)
        await bot.mark("answer-1")
        barge = await bot.wait_caller_speech(end.chunk)
        await bot.clear()
        if leak_after_clear:  # a buggy bot: the cancelled turn's audio keeps coming
            await bot.send_audio(tone_ulaw(300, 500))
        end = await bot.wait_caller_silence(barge)
        await bot.send_audio(tone_ulaw(500, 500))
        await bot.mark("answer-2")
        await bot.wait_echo("answer-2")

    return behaviour


def script() -> CallPlan:
    return CallPlan(
        name="conversation",
        kind="script",
        source="test",
        steps=[
            Say(tone_ulaw(800, 300), text="first question", after=After("bot_silent", 0.3)),
            Say(tone_ulaw(600, 300), text="interruption", after=After("bot_speaking", 0.5)),
            Dtmf("1#", after=After("bot_silent", 0.3)),
            Hangup(After("pause", 0.3)),
        ],
    )


async def replay_against(bot_behaviour):
    async with FakeBot(bot_behaviour) as bot:
        record = await TwilioEmulator(script(), ReplayOptions(url=bot.url, speed=SPEED)).run()
    return record


async def test_turns_latencies_and_barge_in():
    record = await replay_against(conversational_bot())
    report = build_report(record)
    jsonschema.validate(report, SCHEMA)
    assert not report["errors"] and report["call"]["ended_by"] == "caller"
    greeting = report["greeting"]["bot_first_audio_ms"]
    assert greeting is not None and greeting < 200
    first, second, keys = report["turns"]
    assert first["caller_text"] == "first question" and not first["barge_in"]
    assert first["caller_keys"] is None
    # "1#" is one keypad entry; this bot never answers keys.
    assert keys["caller_keys"] == "1#" and keys["caller_text"] is None and not keys["barge_in"]
    assert keys["bot_first_audio_ms"] is None
    # The caller waited for 300 ms of bot silence after the 1 s greeting.
    assert first["caller_speech_start_ms"] == pytest.approx(greeting + 1300, abs=100)
    assert first["caller_speech_end_ms"] - first["caller_speech_start_ms"] == pytest.approx(800, abs=25)
    # The bot answers after 10 quiet frames (200 ms).
    assert 180 <= first["response_latency_ms"] <= 450
    assert second["barge_in"] and second["caller_text"] == "interruption"
    assert second["caller_speech_start_ms"] == pytest.approx(first["bot_first_audio_ms"] + 500, abs=100)
    (barge,) = report["barge_ins"]
    assert 0 <= barge["latency_ms"] <= 200
    assert barge["frames_after_clear"] == 0
    assert barge["bot_talked_over_ms"] == pytest.approx(barge["latency_ms"], abs=30)
    marks = {m["name"]: m for m in report["marks"]}
    assert marks["greeting"]["outcome"] == "played"
    assert marks["answer-1"]["outcome"] == "cleared" and marks["answer-1"]["echoed_ms"] == barge["clear_ms"]
    assert marks["answer-2"]["outcome"] == "played"
    assert [d["digit"] for d in report["dtmf"]] == ["1", "#"]
    assert report["dtmf"][1]["ms"] - report["dtmf"][0]["ms"] == pytest.approx(250, abs=100)
    assert report["bot"]["dropped_ms"] > 2000
    summary = format_summary(report)
    assert "barge-in stopped after" in summary and "first question" in summary


async def test_audio_after_clear_is_counted():
    record = await replay_against(conversational_bot(leak_after_clear=True))
    (barge,) = build_report(record)["barge_ins"]
    assert barge["frames_after_clear"] == 15 and barge["bytes_after_clear"] == 2400


async def test_outputs_wav_report_and_page(tmp_path):
    record = await replay_against(conversational_bot())
    out = write_outputs(record, build_report(record), tmp_path)
    jsonschema.validate(json.loads(out.report_path.read_text()), SCHEMA)
    with wave.open(str(out.wav_path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        assert w.getnframes() == len(record.caller)
    page = out.html_path.read_text()
    assert 'id="timeline"' in page and "conversation" in page
    assert "http://" not in page.split("<script")[0] and "src=" not in page.replace('audio.src', '')


async def test_barging_in_during_a_pause_in_the_bots_speech_counts():
    async def behaviour(bot):
        await bot.send_audio(tone_ulaw(1000, 500) + b"\xff" * 3200 + tone_ulaw(2000, 500))
        speech = await bot.wait_caller_speech()
        await bot.clear()
        await bot.wait_caller_silence(speech)

    plan = CallPlan(
        name="pause", kind="script", source="test",
        steps=[Say(tone_ulaw(500, 300), after=After("bot_speaking", 1.15)), Hangup(After("pause", 0.5))],
    )
    async with FakeBot(behaviour) as bot:
        record = await TwilioEmulator(plan, ReplayOptions(url=bot.url, speed=SPEED)).run()
    report = build_report(record)
    (turn,) = report["turns"]
    assert turn["barge_in"]
    (barge,) = report["barge_ins"]
    assert barge["clear_ms"] is not None and barge["bot_talked_over_ms"] < 100


async def test_keypad_entries_are_turns_with_their_answers():
    """The bot's answer to keys is its own turn, not more of what it said before them."""
    from ivr.telephony.twilio import Dtmf as DtmfEvent

    async def behaviour(bot):
        await bot.send_audio(tone_ulaw(1000, 500))  # the greeting
        for count in (1, 3):  # answers the menu key, then the three-key entry
            await bot.wait_for(lambda: sum(isinstance(r.event, DtmfEvent) for r in bot.received) >= count)
            await asyncio.sleep(0.2 / SPEED)  # 200 ms of call time
            await bot.send_audio(tone_ulaw(600, 500))

    plan = CallPlan(
        name="keys", kind="script", source="test",
        steps=[
            Dtmf("4", after=After("bot_silent", 0.3)),
            Dtmf("12", after=After("bot_silent", 0.8)),
            Hangup(After("bot_silent", 0.5)),
        ],
    )
    async with FakeBot(behaviour) as bot:
        record = await TwilioEmulator(plan, ReplayOptions(url=bot.url, speed=SPEED)).run()
    report = build_report(record)
    jsonschema.validate(report, SCHEMA)
    menu, entry = report["turns"]
    assert (menu["caller_keys"], entry["caller_keys"]) == ("4", "12")
    # "1" then "2" 250 ms later: one entry, from the first key to the last.
    assert 0 < entry["caller_speech_end_ms"] - entry["caller_speech_start_ms"] < 2000
    # Each answer is timed from the last key of its entry (the bot waits 200 ms of call time).
    for turn in (menu, entry):
        assert turn["bot_first_audio_ms"] > turn["caller_speech_end_ms"] and not turn["barge_in"]
        assert turn["response_latency_ms"] == pytest.approx(turn["bot_first_audio_ms"] - turn["caller_speech_end_ms"], abs=0.2)
        assert 150 <= turn["response_latency_ms"] < entry["caller_speech_start_ms"] - menu["caller_speech_end_ms"]
    assert report["caller"]["speech"] == [] and report["barge_ins"] == []
    summary = format_summary(report)
    assert summary.count("latency") == 2 and "caller  " not in summary  # keys print as dtmf lines
