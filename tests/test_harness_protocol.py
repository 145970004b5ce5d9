"""The harness plays Twilio's side exactly: checked against the protocol with a fake bot."""

from __future__ import annotations

import asyncio
import time

import pytest

from fakebot import FakeBot, tone_ulaw
from ivr.harness.emulator import ReplayOptions, TwilioEmulator
from ivr.harness.plan import After, CallPlan, Hangup, Say
from ivr.telephony.twilio import CLOCK_RATE_PARAMETER


def plan_of(*steps, name="test") -> CallPlan:
    return CallPlan(name=name, kind="script", source="test", steps=list(steps))


#: Fast enough for CI, slow enough that a busy machine's scheduling delays (tens of ms of wall
#: time) stay within the tolerances below, which are in call time.
SPEED = 2.5
LATE_MS = 250.0


async def run(plan: CallPlan, url: str, speed: float = SPEED, **options):
    return await TwilioEmulator(plan, ReplayOptions(url=url, speed=speed, **options)).run()


async def test_handshake_sends_connected_start_then_media_every_20ms():
    async with FakeBot() as bot:
        record = await run(plan_of(Say(tone_ulaw(300)), Hangup(After("now"))), bot.url, params={"lang": "en"})
    session = bot.sessions[0]
    # And the clock rate, for a bot whose own playout clock follows the harness's.
    assert session.start.custom_parameters == {"lang": "en", CLOCK_RATE_PARAMETER: f"{SPEED:g}"}
    assert session.start.call_sid == record.call_sid
    media = session.media()
    assert [m.timestamp_ms for m in media] == [20 * k for k in range(len(media))]
    assert [m.chunk for m in media] == list(range(1, len(media) + 1))
    assert all(len(m.payload) == 160 for m in media)
    assert session.stopped.is_set()
    assert record.ended_by == "caller" and not record.errors
    assert len(record.caller) == 160 * len(media)


async def test_mark_echoed_only_after_its_audio_has_played():
    async def behaviour(bot):
        await bot.send_audio(tone_ulaw(1000))
        await bot.mark("first")
        await bot.send_audio(tone_ulaw(500))
        await bot.mark("second")
        await bot.wait_echo("second")

    async with FakeBot(behaviour) as bot:
        record = await run(plan_of(Hangup(After("bot_silent", 0.2))), bot.url)
    session = bot.sessions[0]
    # On the bot's side: when each echo arrived, how much caller audio (= call time) had passed.
    media_before = {}
    last_ts = -1
    for r in session.received:
        if hasattr(r.event, "timestamp_ms"):
            last_ts = r.event.timestamp_ms
        elif getattr(r.event, "name", None):
            media_before[r.event.name] = last_ts
    assert media_before["first"] >= 1000 - 40
    assert media_before["second"] >= 1500 - 40
    first, second = record.playback.marks
    assert (first.name, first.outcome) == ("first", "played")
    # The audio plays from its first piece's arrival, 1000 ms of it before the first mark.
    assert first.due_ms == pytest.approx(record.playback.media[0].recv_ms + 1000, abs=1)
    assert first.due_ms <= first.echoed_ms <= first.due_ms + LATE_MS
    assert second.due_ms <= second.echoed_ms <= second.due_ms + LATE_MS
    assert second.due_ms - first.due_ms == pytest.approx(500, abs=1)


async def test_mark_with_nothing_queued_is_echoed_at_once():
    async def behaviour(bot):
        await bot.wait_media_ms(200)
        await bot.mark("idle")
        await bot.wait_echo("idle")

    async with FakeBot(behaviour) as bot:
        record = await run(plan_of(Hangup(After("at", 0.6))), bot.url)
    (mark,) = record.playback.marks
    assert mark.outcome == "played" and mark.echoed_ms == mark.sent_ms


async def test_marks_late_are_echoed_that_much_after_their_audio_and_never_means_never():
    from ivr.harness.emulator import MarkEchoes

    async def behaviour(bot):
        await bot.send_audio(tone_ulaw(400))
        await bot.mark("m")
        await bot.wait_media_ms(1200)

    for marks in (MarkEchoes.parse("late:500"), MarkEchoes.parse("never")):
        async with FakeBot(behaviour) as bot:
            await run(plan_of(Hangup(After("at", 1.4))), bot.url, marks=marks)
        session = bot.sessions[0]
        last_ts, echoed_after = -1, None
        for r in session.received:
            if hasattr(r.event, "timestamp_ms"):
                last_ts = r.event.timestamp_ms
            elif getattr(r.event, "name", None) == "m":
                echoed_after = last_ts
        if marks.mode == "never":
            assert echoed_after is None
        else:  # due at ~400 ms of call time, echoed 500 ms later
            assert echoed_after is not None and 900 - 40 <= echoed_after <= 900 + LATE_MS
    with pytest.raises(ValueError, match="late:MS"):
        MarkEchoes.parse("late:soon")


async def test_clear_drops_queued_audio_and_returns_pending_marks_at_once():
    async def behaviour(bot):
        await bot.send_audio(tone_ulaw(3000))
        await bot.mark("m1")
        await bot.send_audio(tone_ulaw(1000))
        await bot.mark("m2")
        await bot.wait_media_ms(600)
        await bot.clear()
        await bot.wait_echo("m2")

    async with FakeBot(behaviour) as bot:
        record = await run(plan_of(Hangup(After("at", 2.0))), bot.url)
    (clear_ms,) = record.playback.clears
    assert 580 <= clear_ms <= 600 + LATE_MS
    m1, m2 = record.playback.marks
    assert m1.outcome == m2.outcome == "cleared"
    assert m1.echoed_ms == m2.echoed_ms == clear_ms
    played_ms = sum(m.kept for m in record.playback.media) / 8
    assert played_ms == pytest.approx(clear_ms - record.playback.media[0].recv_ms, abs=1)
    # Both echoes reach the bot before the next caller frame after the clear.
    session = bot.sessions[0]
    kinds = [type(r.event).__name__ for r in session.received]
    first_echo = kinds.index("Mark")
    assert kinds[first_echo : first_echo + 2] == ["Mark", "Mark"]
    # The bot's channel is silent from the clear on.
    bot_track = record.playback.heard_pcm(len(record.caller))
    assert not bot_track[int(clear_ms * 8) + 1 :].any()
    assert bot_track[: int(clear_ms * 8) - 8].any()


async def test_speed_clock_agrees_with_the_wall_clock():
    speed = 10.0
    async with FakeBot() as bot:
        t0 = time.monotonic()
        record = await run(plan_of(Say(tone_ulaw(5000)), Hangup(After("now"))), bot.url, speed=speed)
        wall = time.monotonic() - t0
    # 250 frames, and the hang-up right after the last: 5 s of call time...
    assert len(record.caller) == 250 * 160
    assert record.end_ms == pytest.approx(5000, abs=200)
    # ...in about 0.5 s of wall time (generous bounds: a busy machine delays, never speeds up).
    assert 0.45 <= wall <= 3.0
    assert record.wall_seconds * 1000 * speed == pytest.approx(record.end_ms, rel=0.5)
    # Each frame's call-clock timestamp matches when it arrived, scaled by the speed.
    session = bot.sessions[0]
    arrivals = [(r.wall, r.event.timestamp_ms) for r in session.received if hasattr(r.event, "timestamp_ms")]
    first_wall = arrivals[0][0]
    errors = sorted(abs((w - first_wall) * 1000 * speed - ts) for w, ts in arrivals)
    assert errors[len(errors) // 2] < 100  # median within 10 ms of wall time
    assert errors[-1] < 2000


async def test_bad_bot_messages_are_errors_not_crashes():
    async def behaviour(bot):
        await bot.send_raw("not json")
        await bot.send_raw('{"event":"media","streamSid":"MZother","media":{"payload":"AAAA"}}')
        await bot.send_raw('{"event":"dance","streamSid":"%s"}' % bot.start.stream_sid)
        await bot.send_audio(tone_ulaw(200))

    async with FakeBot(behaviour) as bot:
        record = await run(plan_of(Hangup(After("bot_silent", 0.2))), bot.url)
    kinds = [e.kind for e in record.errors]
    assert kinds == ["bad_json", "stream_sid_mismatch", "unknown_event"]
    assert record.ended_by == "caller" and len(record.playback.media) == 10


async def test_upgrade_is_signed_like_twilio_when_given_a_token():
    from twilio.request_validator import RequestValidator

    async with FakeBot() as bot:
        sign_url = "wss://bot.example.com/media"
        await run(plan_of(Hangup(After("now"))), bot.url, auth_token="secret", sign_url=sign_url)
    signature = bot.sessions[0].headers["X-Twilio-Signature"]
    assert RequestValidator("secret").validate(sign_url, {}, signature)


async def test_connect_failure_is_recorded():
    record = await run(plan_of(Hangup()), "ws://127.0.0.1:9/media")
    assert record.failed and record.errors[0].kind == "connect_failed"


async def test_bot_hanging_up_ends_the_call():
    async def behaviour(bot):
        await bot.wait_media_ms(300)

    async with FakeBot(behaviour, close_after=True) as bot:
        record = await run(plan_of(Say(tone_ulaw(3000)), Hangup()), bot.url)
    assert record.ended_by == "bot" and not record.failed
    assert record.end_ms < 1500


async def _speak_in_real_time(bot, ms: int, lead_frames: int = 5) -> None:
    """The bot's voice a frame at a time on the call clock, a few frames ahead of the caller's
    ear (as ivr's own speaker feeds it), each on its own deadline so that it never runs dry."""
    tone = tone_ulaw(ms)
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(tone), 160)):
        await asyncio.sleep(max(0.0, t0 + (k - lead_frames) * 0.02 / SPEED - time.monotonic()))
        await bot.send_audio(tone[i : i + 160])


def _frames_sent_ms(bot) -> int:
    return 20 * len(bot.sessions[0].media())


async def test_bot_silent_fires_on_time_after_a_voice_fed_frame_by_frame():
    async def behaviour(bot):
        await bot.wait_media_ms(200)
        await _speak_in_real_time(bot, 1200)

    async with FakeBot(behaviour) as bot:
        record = await run(plan_of(Hangup(After("bot_silent", 0.3))), bot.url)
    voice_end_ms = record.playback.voiced[-1][1] / 8
    assert voice_end_ms > 1000
    assert record.end_ms == pytest.approx(voice_end_ms + 300, abs=1)
    # The caller hung up then, not a wake-up later: no frame went out well after it.
    assert _frames_sent_ms(bot) <= record.end_ms + LATE_MS


async def test_bot_speaking_counts_a_voice_begun_over_the_caller_once_it_carries_on():
    async def behaviour(bot):
        speech = await bot.wait_caller_speech()
        await bot.wait_media_ms(speech.timestamp_ms + 300)  # 300 ms before the caller stops
        await _speak_in_real_time(bot, 3000)

    async with FakeBot(behaviour) as bot:
        record = await run(plan_of(Say(tone_ulaw(600)), Hangup(After("bot_speaking", 1.0))), bot.url)
    start_ms = record.playback.voiced[0][0] / 8
    caller_end_ms = record.utterances[0].speech_spans_ms()[-1][1]
    assert start_ms < caller_end_ms  # the bot began over the caller...
    # ...and, carrying on past the cut window, counts from its start: the hang-up is 1 s after
    # it, heard at once once the stretch counts, not a second after the voice heard so far.
    assert record.end_ms == pytest.approx(start_ms + 1000, abs=25)
    assert _frames_sent_ms(bot) <= record.end_ms + LATE_MS
