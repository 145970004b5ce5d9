"""A bot turn's words to the line: brain text -> pieces -> TTS -> 20 ms frames, paced on the clock.

Two tasks per turn:
- `_produce` makes the turn's frames as fast as the brain and the TTS go, into `turn.frames`;
- `_play` sends them no more than the lead ahead of the caller's ear, as the playout clock
  (ivr.call.playout) reckons it, with a mark after each piece when the carrier echoes marks.
  The frames of one top-up go as one message where the carrier takes audio of any size
  (`max_frames_per_message`), never past a piece's end, where its mark goes.

Sending only a lead ahead (rather than all at once) keeps the engine's picture of what the caller
hears true without any echo, keeps a carrier's buffer short so that a pause by not feeding stops
the bot soon, and means a turn cut early never had its whole audio sent.

`speak()` returns once the turn has played out: the clock's end of the audio, or a pending
mark's echo, which the clock waits for only up to its margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator, Callable

from ivr import loopbound
from ivr.audio import PhoneEncoder
from ivr.call.cache import PromptCache
from ivr.call.playout import PlayoutClock
from ivr.call.splitter import SplitOptions, TextSplitter
from ivr.call.timebase import Timebase
from ivr.call.turn import BotTurn
from ivr.providers.base import BrainOutput, TextDelta, TextToSpeech, ToolCall

#: Top the carrier's queue up when it has fallen this far under the lead: a few frames per
#: wake-up rather than one (at most half the lead: see Speaker.top_up_s).
TOP_UP_S = 0.06


class Speaker:
    def __init__(self, line, clock: PlayoutClock, time: Timebase, tts: TextToSpeech, cache: PromptCache,
                 split: SplitOptions, lead_s: float, marks: bool, goodbye_timeout_s: float,
                 on_first_audio: Callable[[BotTurn, float], None], emit: Callable[[dict], None], log) -> None:
        self.line = line
        self.clock = clock
        self.time = time
        self.tts = tts
        self.cache = cache
        self.split = split
        self.lead_s = lead_s
        # Never wait for the queue to fall further than the lead itself: with a small lead
        # (AudioSocket's 40 ms) a fixed top-up would let the line run dry for a frame each time.
        self.top_up_s = min(TOP_UP_S, lead_s / 2)
        self.marks = marks
        # Frames sent in one go leave as one message where the carrier takes any size: each
        # message costs a JSON build, a base64 and a write, whatever it carries.
        self.max_batch = getattr(line, "max_frames_per_message", 1)
        self.goodbye_timeout_s = goodbye_timeout_s
        self.on_first_audio = on_first_audio
        self.emit = emit
        self.log = log
        self._warned_overdue = False

    async def speak(self, turn: BotTurn, outputs: AsyncIterator[BrainOutput]) -> None:
        """Make and send the turn; return once it has played out (raises if it was cut)."""
        tts_state: list = []
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce(turn, outputs, tts_state))
                group.create_task(self._play(turn))
        finally:
            if tts_state and not turn.made_whole:
                # Cut, failed or the call ended: free the TTS worker now (a cancelled task may
                # still await here: the cancel is the cleanup itself).
                with contextlib.suppress(Exception):
                    await tts_state[0].cancel()
            turn.done_generating = True
        await self.played_out(turn)

    async def say_more(self, turn: BotTurn, frames: list[bytes]) -> None:
        """Add audio with no words (DTMF tones) to a turn that has played out, and play it."""
        index = len(turn.ledger.pieces)
        turn.ledger.add(index, "")
        turn.add_frames(index, frames)
        turn.ledger.complete(index, turn.mark_name(index))
        await self._play(turn)
        await self.played_out(turn)

    # --- making the frames -----------------------------------------------------------------

    async def _produce(self, turn: BotTurn, outputs: AsyncIterator[BrainOutput], tts_state: list) -> None:
        queue: asyncio.Queue = loopbound.Queue()

        async def add_piece(text: str) -> None:
            index = len(turn.ledger.pieces)
            turn.ledger.add(index, text)
            self.emit({"type": "bot", "turn": turn.number, "piece": index, "mark": turn.mark_name(index), "text": text})
            cached = self.cache.get(text)
            tts_piece = -1
            if cached is None:
                if not tts_state:
                    stream = self.tts.stream()
                    tts_state.extend((stream, stream.__aiter__()))
                # The TTS numbers only the pieces it is given; cached ones never reach it.
                tts_piece = await tts_state[0].push(text)
            await queue.put((index, cached, tts_piece))

        async def feed() -> None:
            splitter = TextSplitter(self.split)
            try:
                async for out in outputs:
                    if turn.timing is not None and turn.timing.brain_first_at is None:
                        turn.timing.brain_first_at = time.monotonic()
                    if isinstance(out, TextDelta):
                        for piece in splitter.push(out.text):
                            await add_piece(piece)
                    elif isinstance(out, ToolCall):
                        turn.tools.append(out)
                for piece in splitter.flush():
                    await add_piece(piece)
            finally:
                with contextlib.suppress(Exception):
                    await outputs.aclose()  # type: ignore[attr-defined]
            if tts_state:
                await tts_state[0].end()
            await queue.put(None)

        async def render() -> None:
            while (item := await queue.get()) is not None:
                index, cached, tts_piece = item
                if cached is not None:
                    turn.add_frames(index, list(cached))
                else:
                    frames = await self._render_piece(turn, index, tts_state[1], tts_piece)
                    if turn.gate_open:
                        self.cache.put(turn.ledger.piece(index).text, frames)
                turn.ledger.complete(index, turn.mark_name(index))
                turn.notify()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                group.create_task(render())
            turn.made_whole = True
        finally:
            turn.produced = turn.done_generating = True
            turn.notify()

    async def _render_piece(self, turn: BotTurn, index: int, tts_iter, tts_piece: int) -> list[bytes]:
        """One piece's frames as they are synthesised, into the turn; returns them (for the cache)."""
        frames: list[bytes] = []
        encoder: PhoneEncoder | None = None
        while True:
            try:
                chunk = await tts_iter.__anext__()
            except StopAsyncIteration:
                self.log.warning("the TTS stream ended before piece %d was complete", index)
                break
            if chunk.piece != tts_piece:
                self.log.warning("TTS chunk for piece %d while speaking piece %d; dropped", chunk.piece, tts_piece)
                continue
            if chunk.audio:
                if encoder is None:
                    encoder = PhoneEncoder(8000 if chunk.encoding == "ulaw" else chunk.sample_rate)
                out = encoder.push_ulaw(chunk.audio) if chunk.encoding == "ulaw" else encoder.push(chunk.audio)
                turn.add_frames(index, out, chunk.words)
                frames += out
            if chunk.last:
                break
        if encoder is not None:
            out = encoder.flush()
            turn.add_frames(index, out)
            frames += out
        return frames

    # --- sending them ----------------------------------------------------------------------

    async def _play(self, turn: BotTurn) -> None:
        clock, time, line = self.clock, self.time, self.line
        while True:
            turn.changed.clear()
            if not turn.gate_open:
                return
            if turn.paused:
                await turn.changed.wait()  # a resume or a cut
                continue
            await self._send_marks(turn)
            if turn.cursor >= len(turn.frames):
                if turn.produced:
                    return
                await turn.changed.wait()
                continue
            now = time.now()
            ahead = clock.queued(now)
            if ahead >= self.lead_s - 1e-6:
                await time.wait(turn.changed, until=now + ahead - self.lead_s + self.top_up_s)
                continue
            # Nothing may await between the gate check and the send: a cut or a pause (which
            # runs between our awaits) must find no frame of this turn after its clear. So a
            # batch is one send, and the gate is checked again before the next.
            while turn.cursor < len(turn.frames) and turn.gate_open and not turn.paused and clock.queued(now) < self.lead_s - 1e-6:
                first = pos = turn.cursor
                end = min(self._batch_end(turn), first + self.max_batch)
                # The clock counts each frame (its runs, cuts and resumes are in frames); the
                # lead caps the batch as it capped the frame-by-frame loop.
                while pos < end and clock.queued(now) < self.lead_s - 1e-6:
                    clock.sent(now, turn.number, pos)
                    pos += 1
                turn.cursor = pos
                if turn.first_audio_at is None:
                    self.on_first_audio(turn, now)
                await line.send_frames(turn.frames[first:pos])
                await self._send_marks(turn)
                now = time.now()

    @staticmethod
    def _batch_end(turn: BotTurn) -> int:
        """Where the next batch must stop: the end of the piece whose mark is due next, so that
        the mark goes right after that piece's last frame and no frame of the next piece comes
        before it. A piece still being made owns every frame there is so far."""
        pieces = turn.ledger.pieces
        if turn.next_mark < len(pieces):
            piece = pieces[turn.next_mark]
            if piece.complete and piece.end_frame > turn.cursor:
                return piece.end_frame
        return len(turn.frames)

    async def _send_marks(self, turn: BotTurn) -> None:
        """A mark after each complete piece whose last frame has been sent."""
        pieces = turn.ledger.pieces
        while turn.next_mark < len(pieces) and turn.gate_open and not turn.paused:
            piece = pieces[turn.next_mark]
            if not piece.complete or piece.end_frame > turn.cursor:
                return
            turn.next_mark += 1
            if self.marks:
                name = turn.sent_mark_name(piece.index)
                self.clock.mark(name, self.time.now())
                await self.line.send_mark(name)

    async def played_out(self, turn: BotTurn) -> None:
        """Until the caller has heard the turn: the clock's end of its audio, confirmed by its
        marks' echoes for at most the clock's margin; never longer than the goodbye timeout."""
        clock, time = self.clock, self.time
        deadline = time.now() + self.goodbye_timeout_s
        while turn.gate_open:
            turn.changed.clear()
            now = time.now()
            if turn.paused:
                await turn.changed.wait()
                continue
            late = clock.overdue(now)
            if late:
                clock.forget(late)
                if not self._warned_overdue:
                    self._warned_overdue = True
                    self.log.info("mark %s not echoed %.1f s after its audio played: going by the playout clock",
                                  late[0], clock.margin_s)
            settled = clock.settled_at()
            if settled <= now:
                break
            if now >= deadline:
                self.log.warning("the bot's last words were not confirmed played; going on")
                break
            await time.wait(turn.changed, until=min(settled, deadline))
        turn.settle()
