"""The carrier's side of a call (Twilio's by default), over a real WebSocket or Asterisk's
AudioSocket TCP: the caller's media out, the bot's played back. `ivr.harness.carriers` holds
what each carrier writes and reads; the clock, the plan and the playout model are the same.

Four tasks share one call clock:
- frames: media frame k goes out at k * 20 ms, whatever the caller is saying (silence between),
  sent by a `FramePacer` (one timer for all the calls of a load run);
- receive: the bot's media/mark/clear feed the playout model (`TwilioPlayback`);
- marks: echoes each mark when the audio queued before it has played;
- drive: runs the call plan's steps (speak, DTMF, wait for the bot, hang up).
Nothing the bot sends can crash the call: bad messages become errors in the record.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Mapping

from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidURI

from ivr.audio import FRAME_BYTES, FRAME_MS
from ivr.harness.carriers import SIDES, CarrierSide, Hangup as BotHangup
from ivr.harness.clock import TIMER_RESOLUTION_S, CallClock, FramePacer, timer_delay
from ivr.harness.playback import to_sample
from ivr.harness.plan import After, CallPlan, Dtmf, Hangup, Say, Wait
from ivr.harness.record import CallRecord
from ivr.harness.voice import CallerVoice, Utterance
from ivr.harness.wsclient import WebSocketClient, connect
from ivr.loopbound import Event, wait_event
from ivr.telephony.twilio import CLOCK_RATE_PARAMETER, OutClear, OutMark, OutMedia, ProtocolError


#: Bot speech that stops this soon after the caller's speech or key ends was cut by it.
CUT_WITHIN_MS = 200.0


_monotonic = time.monotonic


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _clock_rate(speed: float) -> dict[str, str]:
    """Told to the bot when the call clock is not real time (see CLOCK_RATE_PARAMETER)."""
    return {CLOCK_RATE_PARAMETER: f"{speed:g}"} if speed != 1 else {}


@dataclass(frozen=True)
class MarkEchoes:
    """How this Twilio echoes marks: on time (as Twilio does), `late` by `delay_ms` (a lossy or
    slow link), or `never` (a carrier without marks)."""

    mode: str = "on"
    delay_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "MarkEchoes":
        """'on', 'never' or 'late:MS'."""
        kind, _, ms = text.strip().lower().partition(":")
        if kind in ("on", "never") and not ms:
            return cls(kind)
        if kind == "late":
            try:
                delay = float(ms)
            except ValueError:
                delay = -1.0
            if delay > 0:
                return cls("late", delay)
        raise ValueError(f"marks {text!r}: use on, never or late:MS (e.g. late:2500)")


@dataclass
class ReplayOptions:
    url: str
    speed: float = 1.0
    params: Mapping[str, str] = field(default_factory=dict)
    #: With a Twilio auth token, the upgrade carries X-Twilio-Signature over `sign_url`
    #: (default: `url`), as Twilio signs the `<Stream url>` written in the TwiML.
    auth_token: str | None = None
    sign_url: str | None = None
    connect_timeout_s: float = 10.0
    #: Hang up after this much call time whatever the plan says.
    max_call_s: float = 600.0
    marks: MarkEchoes = field(default_factory=MarkEchoes)
    #: Keep the caller's audio as sent (`CallRecord.caller`, for the report's frame count and
    #: the WAV); a load run, which reads neither, does not.
    keep_caller_audio: bool = True
    #: Whose side of the call to play (ivr.harness.carriers.CARRIERS); `audiosocket` takes a
    #: tcp://host:port URL.
    carrier: str = "twilio"
    account_sid: str = field(default_factory=lambda: _sid("AC"))
    call_sid: str = field(default_factory=lambda: _sid("CA"))
    stream_sid: str = field(default_factory=lambda: _sid("MZ"))


class CallEnded(Exception):
    """The WebSocket closed while a step was waiting."""


def signature_headers(options: ReplayOptions) -> dict[str, str]:
    if not options.auth_token:
        return {}
    from twilio.request_validator import RequestValidator

    url = options.sign_url or options.url
    return {"X-Twilio-Signature": RequestValidator(options.auth_token).compute_signature(url, {})}


class TwilioEmulator:
    def __init__(self, plan: CallPlan, options: ReplayOptions, pacer: FramePacer | None = None) -> None:
        self.plan = plan
        self.options = options
        self.clock = CallClock(options.speed)
        #: Sends the caller's frames on time; a load run shares one among all its calls.
        self._pacer = pacer or FramePacer()
        #: True when the frames stopped as the call ended or hung up, False if the socket went.
        self._frames_done: asyncio.Future[bool] | None = None
        params = {**plan.params, **options.params, **_clock_rate(options.speed)}
        if options.carrier not in SIDES:
            raise ValueError(f"carrier {options.carrier!r}: one of {', '.join(SIDES)}")
        self.side: CarrierSide = SIDES[options.carrier](options.call_sid, options.stream_sid, options.account_sid, params)
        self.voice = CallerVoice()
        self.record = CallRecord(
            name=plan.name,
            kind=plan.kind,
            source=plan.source,
            url=options.url,
            speed=options.speed,
            call_sid=self.side.call_id,
            stream_sid=self.side.stream_id,
            params=params,
            started_at="",
        )
        self.record.utterances = self.voice.utterances
        self.playback = self.record.playback
        self._ws: WebSocketClient | TcpConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the call runs on, from run()
        #: Resolved when the bot's audio changes (media or clear), for steps waiting on the bot;
        #: made only while one waits, so a frame of bot audio costs nothing more otherwise.
        self._bot_changed: asyncio.Future[None] | None = None
        #: The timer that echoes the first pending mark, and when that mark is due.
        self._mark_timer: asyncio.TimerHandle | None = None
        self._mark_timer_due: float | None = None
        # Bound to the loop once (ivr.loopbound): a load run waits on these several times a
        # second per call.
        self._hangup = Event()
        #: Call time of the caller's hang-up, once known: no frame due at or after it is sent.
        self._hangup_at: float | None = None
        self._ended = Event()
        self._late_echoes: set[asyncio.Task] = set()
        self._stop_sent = False
        #: Bot conditions count what the bot said after this: the caller's last speech or DTMF.
        self._reference_ms = 0.0

    # --- the call ------------------------------------------------------------------------------

    async def run(self) -> CallRecord:
        wall0 = time.monotonic()
        self._loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self.record.error(0.0, "connect_failed", f"{type(exc).__name__}: {exc}")
            self.record.ended_by = "error"
            self.record.wall_seconds = time.monotonic() - wall0
            return self.record
        self.record.connected = True
        # Call time 0 on the pacer's start grid (a few milliseconds at most), so this call's
        # frames fall due with other calls' and share their wake-ups.
        start = self._pacer.start_at(time.monotonic())
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.clock.start(start)
        self.record.monotonic_start = self.clock.monotonic_at(0.0)
        self.record.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            for message in self.side.opening():
                await self._ws.send(message)
            async with asyncio.TaskGroup() as tg:
                # The plan starts first, so audio it queues at call time 0 goes out in frame 0.
                drive = tg.create_task(self._drive())
                tg.create_task(self._receive())
                tg.create_task(self._send_frames())
                await self._ended.wait()
                drive.cancel()
        except ConnectionClosed:
            pass  # the receive task records how it closed
        except Exception as exc:  # a harness bug: keep the evidence, do not lose the record
            for inner in getattr(exc, "exceptions", [exc]):
                self.record.error(self.clock.now_ms(), "harness_error", f"{type(inner).__name__}: {inner}")
            self.record.ended_by = "error"
        finally:
            if self._mark_timer is not None:
                self._mark_timer.cancel()
            self._mark_timer_due = None  # a pass that was to echo a mark finds nothing to do
            for task in list(self._late_echoes):
                task.cancel()
            if self._ws is not None:
                await self._ws.close()
        self.playback.finish()
        self.voice.abandon()
        if not self.record.end_ms:
            self.record.end_ms = self.clock.now_ms()
        self.record.wall_seconds = time.monotonic() - wall0
        return self.record

    async def _connect(self) -> None:
        if self.side.transport == "tcp":
            self._ws = await TcpConnection.open(self.options.url, self.options.connect_timeout_s)
            return
        # No permessage-deflate (Twilio negotiates none) and no pings of our own (Twilio sends
        # none); the bot's pings are answered.
        self._ws = await connect(
            self.options.url,
            headers=signature_headers(self.options) if self.side.name == "twilio" else {},
            user_agent="ivr-replay (Twilio Media Streams emulator)",
            open_timeout=self.options.connect_timeout_s,
            close_timeout=5,
            max_size=2**24,
        )

    # --- caller audio, one frame per 20 ms of call time ----------------------------------------

    async def _send_frames(self) -> None:
        """Hand the frames to the pacer; when they stop, end the stream as Twilio does."""
        self._frames_done = done = asyncio.get_running_loop().create_future()
        if self._ended.is_set() or self._hangup.is_set():
            done.set_result(True)  # the plan hung up, or the bot, before the first frame
        self._frame_k = 0
        self._max_frames = int(self.options.max_call_s * 1000 / FRAME_MS)
        # Bound once: the pacer calls _send_frame for every call every 20 ms.
        self._write_media = self._ws.frame_writer(self.side.media_text)
        self._media_bytes = self.side.media_bytes
        self._frame_lags = self.record.frame_lag_ms
        self._caller_track = self.record.caller if self.options.keep_caller_audio else None
        self._frames_t0 = self.clock.monotonic_at(0.0)
        self._call_ms_per_s, self._frame_s = 1000.0 * self.clock.speed, self.clock.wall_seconds(FRAME_MS)
        overridden = type(self)._notify_tick is not TwilioEmulator._notify_tick
        self._tick = self._notify_tick if overridden else None
        if not done.done():
            self._pacer.add(self._frames_t0, self._send_frame)
            reads = self._pacer.reads
            if reads is not None and isinstance(self._ws, WebSocketClient) and reads.add(self._ws):
                # Read with the frames while they go; the closing handshake, by the transport.
                ws = self._ws
                done.add_done_callback(lambda _: reads.remove(ws))
        if not await done or self._ended.is_set():
            return  # the connection went first: the receive task records how
        # On the call clock: the plan's hang-up time when it set one (the stream holds exactly
        # the frames before it), however late the frames got there.
        self.record.end_ms = self._hangup_at if self._hangup_at is not None else self.clock.now_ms()
        self._stop_sent = True
        try:
            stop = self.side.stop()
            if stop is not None:
                await self._ws.send(stop)
            await self._ws.close()
        except ConnectionClosed:
            pass

    def _send_frame(self, now: float) -> float | None:
        """The pacer's callback: send frame k (due now), return when frame k + 1 is due, or None
        once the frames stop (hang-up, the call's end, the length limit).

        The call's end and the caller's hang-up resolve `_frames_done` as they happen
        (`_stop_frames`), so one check of it here covers both."""
        done = self._frames_done
        if done.done():
            return None
        k = self._frame_k
        due = k * FRAME_MS
        try:
            hangup_at = self._hangup_at
            if hangup_at is not None and due >= hangup_at:
                done.set_result(True)
                return None
            frame = self.voice.next_frame(k * FRAME_BYTES)
            if not self._write_media(self._media_bytes(frame, due)):
                done.set_result(False)  # the connection is closing
                return None
            # The clock read after the write: the lag is when the frame went out, not when its
            # turn came. CallClock.now_ms(), inline: this runs for every frame of every call.
            lag = (_monotonic() - self._frames_t0) * self._call_ms_per_s - due
            # Early by less than the timer resolution counts as on time.
            self._frame_lags.append(lag if lag > 0.0 else 0.0)
            if self._caller_track is not None:
                self._caller_track += frame
            self._frame_k = k = k + 1
            if self._tick is not None:
                self._tick()
            if k >= self._max_frames:
                self.record.error(self.clock.now_ms(), "max_duration", f"hung up after {self.options.max_call_s:g} s")
                done.set_result(True)
                return None
            return self._frames_t0 + k * self._frame_s
        except Exception as exc:  # a harness bug: surfaces in run() as a harness_error
            done.set_exception(exc)
            return None

    def _notify_tick(self) -> None:
        """Called after each caller frame goes out: a hook for subclasses (the fake Twilio API
        gives its answering-machine verdict on the call clock)."""

    def _stop_frames(self) -> None:
        """No frame after this one (the caller hung up, or the call ended)."""
        done = self._frames_done
        if done is not None and not done.done():
            done.set_result(True)

    def _answers_sooner(self, changes_before: int, end_before: int) -> bool:
        """Could the bot audio just queued make a waiting step's answer come sooner than the
        step's own timer? Only speech that newly counts as said since the caller's (not speech
        the caller cut, see `_fire_time`): a new stretch while none since the caller's counts
        yet, or the last stretch growing past the point where it counts.

        Once a stretch counts, more audio moves every answer later, not earlier (the end of
        speech, the next edge), so the step's timer, which re-reads the playback when it fires,
        is soon enough: the step is not woken by every word or frame of the bot's voice."""
        voiced = self.playback.voiced
        threshold = to_sample(self._reference_ms + CUT_WITHIN_MS)
        if not voiced or end_before >= threshold:
            return False  # nothing played, or a stretch that counts had already ended past it
        return self.playback.voice_changes != changes_before or threshold <= voiced[-1][1]

    def _notify_bot_changed(self) -> None:
        changed, self._bot_changed = self._bot_changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _bot_change_or(self, call_ms: float) -> None:
        """Wait until the bot's audio changes or the call clock reads `call_ms`."""
        if self._ended.is_set():
            raise CallEnded
        delay = self.clock.wall_seconds(call_ms - self.clock.now_ms())
        if delay > 0:
            # The timer resolves the same future a change would: no task cancellation, which
            # asyncio.timeout() uses and which costs more than the wait, several times a second
            # per call under `ivr load`.
            loop = self._loop
            self._bot_changed = changed = loop.create_future()
            timer = None if delay == float("inf") else loop.call_later(timer_delay(delay), _resolve, changed)
            try:
                await changed
            finally:
                if timer is not None:
                    timer.cancel()
                if self._bot_changed is changed:
                    self._bot_changed = None
        if self._ended.is_set():
            raise CallEnded

    # --- the bot's side -------------------------------------------------------------------------

    async def _receive(self) -> None:
        try:
            await self._ws.serve(self._on_bot_message)
        except ConnectionClosedError as exc:
            if not self._stop_sent:
                self.record.error(self.clock.now_ms(), "connection_closed", f"closed abnormally: {exc}")
                self.record.ended_by = "error"
        finally:
            if not self.record.ended_by:
                self.record.ended_by = "caller" if self._stop_sent else "bot"
            if not self._stop_sent and not self.record.end_ms:
                self.record.end_ms = self.clock.now_ms()
            self._ended.set()
            self._notify_bot_changed()
            self._stop_frames()

    def _on_bot_message(self, message: str | bytes) -> None:
        """Each message as it is read (no task switch per message): the playout model, and the
        echoes that are due at once."""
        if self._stop_sent:
            return  # Twilio has stopped listening
        # When it arrived: a load run's read batch reads it a little later, with the kernel's time.
        at = self._ws.received_at
        now = self.clock.now_ms() if at is None else self.clock.call_ms(at)
        try:
            events = self.side.parse(message)
        except ProtocolError as exc:
            self.record.error(now, exc.kind, exc.detail)
            return
        for event in events:
            if isinstance(event, OutMedia):
                playback = self.playback
                if self._bot_changed is None:
                    playback.on_media(now, event.payload)
                    continue
                changes, end = playback.voice_changes, playback.voiced[-1][1] if playback.voiced else 0
                playback.on_media(now, event.payload)
                if self._answers_sooner(changes, end):
                    self._notify_bot_changed()
                continue
            if isinstance(event, BotHangup):
                self._ws.begin_close()  # the carrier ends the call the bot asked it to end
                return
            if isinstance(event, OutMark):
                echoes = self.playback.on_mark(now, event.name)
                self._arm_marks()
            else:
                assert isinstance(event, OutClear)
                echoes = self.playback.on_clear(now)
                self._arm_marks()  # the clear took every pending mark: their timer goes too
                self._notify_bot_changed()
                if not self.side.echoes_on_clear:
                    continue  # this carrier drops the pending marks with the audio
            for mark in echoes:
                self._echo(mark.name)

    def _echo(self, name: str) -> None:
        marks = self.options.marks
        echo = self.side.mark(name)
        if marks.mode == "never" or echo is None:
            return
        if marks.mode == "on":
            self._ws.send_now(echo)  # a closed connection is recorded by the receive task
            return
        task = asyncio.create_task(self._echo_later(name, self.clock.now_ms() + marks.delay_ms))
        self._late_echoes.add(task)
        task.add_done_callback(self._late_echoes.discard)

    async def _echo_later(self, name: str, at_ms: float) -> None:
        try:
            await self._sleep_until(at_ms)
            await self._ws.send(self.side.mark(name))
        except (CallEnded, ConnectionClosed):
            pass

    def _arm_marks(self) -> None:
        """Have the first pending mark echoed when its audio has played: one timer for the
        call, moved only when the first pending mark changes (a mark queued when none was, or
        after a clear), not a task woken for every mark.

        In a load run whose bot messages are read in the pacer's passes, the echo goes in the
        pass at the first point of the start grid at or after the time its audio has played
        (at most 4 ms on, and up to the timer resolution early, as a frame may go): a wake-up
        of its own for each mark was a fifth of the generator's wake-ups at 100 calls. That
        pass is a wake-up of its own only when no call's frames fall on that point (a few
        calls, or a call clock not at real speed). Twilio's own echoes come back on its 20 ms
        playout ticks."""
        due = self.playback.next_due_ms()
        if due == self._mark_timer_due:
            return
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        self._mark_timer_due = due
        if due is None:
            return
        if self._ws.read_batch is not None:
            pass_at = FramePacer.start_at(self.clock.monotonic_at(due))
            self._pacer.add(pass_at, lambda _now: self._echo_in_pass(due))
            return
        self._mark_timer = self._loop.call_later(
            timer_delay(self.clock.wall_seconds(due - self.clock.now_ms())), self._echo_due_marks)

    def _echo_in_pass(self, due: float) -> None:
        """The pacer's one-off callback for a mark due at `due`: nothing if the first pending
        mark has changed since (a clear, the call's end)."""
        if self._mark_timer_due != due:
            return
        try:
            batch = self._ws.read_batch
            if batch is not None:
                # The pass reads the bot's messages after its callbacks: a clear that came
                # before `due` and waits unread must cut the mark's audio before the echo.
                batch.read_now(self._ws)
            if self._mark_timer_due == due:
                self._echo_due_marks(TIMER_RESOLUTION_S * self._call_ms_per_s)
        except Exception as exc:  # a harness bug: this call's, not every call's pass
            done = self._frames_done
            if done is not None and not done.done():
                done.set_exception(exc)  # run() records it as a harness_error
            else:
                self.record.error(self.clock.now_ms(), "harness_error", f"{type(exc).__name__}: {exc}")

    def _echo_due_marks(self, early_ms: float = 0.0) -> None:
        """Echo the marks whose audio has played, or will within `early_ms` (a pass running a
        moment early, as a timer may: on time, not a second wake-up a moment later)."""
        self._mark_timer = self._mark_timer_due = None
        if self._ended.is_set():
            return
        for mark in self.playback.due_marks(self.clock.now_ms(), early_ms):
            self._echo(mark.name)
        self._arm_marks()  # the next mark, or this one again if the timer fired a moment early

    # --- the caller's plan ------------------------------------------------------------------------

    async def _drive(self) -> None:
        previous_end = 0.0
        try:
            for step in self.plan.steps:
                if isinstance(step, Hangup) and step.after.kind in ("pause", "at"):
                    # Known ahead: the frame pacer stops at it even if this task runs late.
                    self._hangup_at = self._fire_time(step.after, previous_end, 0.0)
                fired = await self._wait_for(step.after, previous_end)
                if isinstance(step, Hangup):
                    if self._hangup_at is None:
                        self._hangup_at = fired
                    break
                if isinstance(step, Say):
                    utterance = self.voice.say(Utterance(step.ulaw, step.text, step.segmentation, step.label))
                    if step.wait:
                        await self._until(utterance.done)
                        spans = utterance.speech_spans_ms()
                        if spans:
                            self._reference_ms = spans[-1][1]
                elif isinstance(step, Dtmf):
                    await self._send_dtmf(step, fired)
                else:
                    assert isinstance(step, Wait)
                previous_end = self.clock.now_ms()
        except (CallEnded, ConnectionClosed):
            return
        if self._hangup_at is None:
            self._hangup_at = self.clock.now_ms()  # the plan ran out of steps
        self._hangup.set()
        self._stop_frames()  # the caller hangs up now, not at the next frame

    async def _send_dtmf(self, step: Dtmf, start_ms: float) -> None:
        for i, digit in enumerate(step.digits):
            if i:  # each key at its own time from the first, so one late key does not delay the rest
                await self._sleep_until(start_ms + i * step.gap_s * 1000)
            await self._ws.send(self.side.dtmf(digit))
            now = self.clock.now_ms()
            self.record.dtmf.append((digit, now))
            self._reference_ms = now

    async def _until(self, event: asyncio.Event) -> None:
        # The call's end cancels this task (run()), so the event alone is waited on.
        await event.wait()

    async def _wait_for(self, after: After, previous_end: float) -> float:
        """Wait for the step's condition; returns the call time at which it came true."""
        if after.kind == "now":
            return self.clock.now_ms()
        if after.kind in ("pause", "at"):
            fire = self._fire_time(after, previous_end, 0.0)
            await self._sleep_until(fire)
            return fire
        bot_condition = after.kind in ("bot_silent", "bot_speaking")
        deadline = self.clock.now_ms() + after.timeout * 1000 if bot_condition else float("inf")
        while True:
            now = self.clock.now_ms()
            fire = self._fire_time(after, previous_end, now)
            if fire is not None and now >= fire:
                return fire
            if now >= deadline:
                self.record.error(now, "timeout", f"'{after.kind} {after.seconds:g}': bot did not oblige within {after.timeout:g} s")
                return now
            # Nothing changes the answer but the bot's audio and the clock passing the next edge
            # of what it plays: wait for whichever comes first, not for every frame.
            wake = fire if fire is not None else self.playback.next_edge_ms(now) + after.seconds * 1000
            cut_edge = self._reference_ms + CUT_WITHIN_MS
            if fire is None and now < cut_edge:
                # A voice begun over the caller's counts once it has played past the cut window.
                wake = min(wake, cut_edge)
            await self._bot_change_or(min(wake, deadline))

    async def _sleep_until(self, call_ms: float) -> None:
        """Wait on the clock itself (not frame ticks), for timed steps such as captured DTMF."""
        delay = self.clock.wall_seconds(call_ms - self.clock.now_ms())
        if delay > 0:
            await wait_event(self._ended, timer_delay(delay))
        if self._ended.is_set():
            raise CallEnded

    def _fire_time(self, after: After, previous_end: float, now: float) -> float | None:
        wait_ms = after.seconds * 1000
        if after.kind == "pause":
            return previous_end + wait_ms
        if after.kind == "at":
            return wait_ms
        ref = self._reference_ms
        # Bot speech that began before the caller's speech or key and stopped within moments of
        # it was cut by it: not the bot speaking since, so the wait is for its answer.
        stretches = [s for s in self.playback.voice_since(ref, now) if not (s[0] < ref and s[1] < ref + CUT_WITHIN_MS)]
        if not stretches:
            return None
        if after.kind == "bot_speaking":
            return stretches[0][0] + wait_ms
        if self.playback.speaking_at(now):
            return None
        return stretches[-1][1] + wait_ms


class TcpConnection:
    """Asterisk's AudioSocket end of a call: a TCP connection with the few methods the emulator
    uses of a WebSocket client (send, send_now, serve, close)."""

    #: Read as it arrives, always (a load run's read batch takes WebSocket connections only).
    received_at = read_batch = None

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str, timeout_s: float) -> "TcpConnection":
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "tcp" or not parts.hostname or not parts.port:
            raise InvalidURI(url, "AudioSocket takes tcp://host:port")
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    def send_now(self, data: bytes) -> bool:
        if self._writer.is_closing():
            return False
        self._writer.write(data)
        return True

    def frame_writer(self, text: bool):
        return self.send_now  # AudioSocket's packets are its frames: nothing to add

    async def send(self, data: bytes) -> None:
        if not self.send_now(data):
            raise ConnectionClosedError(None, None)
        try:
            await self._writer.drain()
        except OSError:  # reset by the bot: as a WebSocket would report it
            raise ConnectionClosedError(None, None) from None

    async def serve(self, handler) -> None:
        """Hand what arrives to `handler` until the bot closes the connection."""
        while True:
            try:
                data = await self._reader.read(65536)
            except OSError:
                data = b""
            if not data:
                return
            handler(data)

    def begin_close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()

    async def close(self) -> None:
        self.begin_close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
