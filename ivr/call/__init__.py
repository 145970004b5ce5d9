"""The conversation engine: one `Call` per Media Stream (see ivr.call.engine)."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import replace
from typing import Callable, Mapping

from ivr.call.engine import Call, CallOptions, CallState, PromptCache
from ivr.call.events import Listener
from ivr.call.splitter import SplitOptions, TextSplitter
from ivr.call.timebase import WallTime, clock_rate
from ivr.config import Settings
from ivr.providers.base import CallContext, TextDelta
from ivr.providers.registry import Providers, build
from ivr.session import Line
from ivr.telephony.control import CallControl, controls_from_env

log = logging.getLogger("ivr.call")

__all__ = ["Call", "CallFactory", "CallOptions", "CallState", "PromptCache"]

RECENT_CALLS = 100


class CallFactory:
    """Makes a `Call` for each stream, sharing the providers and the prompt cache."""

    def __init__(self, providers: Providers, options: CallOptions | None = None,
                 controls: Mapping[str, CallControl] | None = None, marks: bool = True) -> None:
        self.providers = providers
        #: False: the carrier echoes no marks (IVR_MARKS=off); calls go by the playout clock alone.
        self.marks = marks
        self.options = options or CallOptions()
        self.cache = PromptCache()
        #: Each carrier's call control by carrier name (ivr.telephony.control); a line's carrier
        #: picks its own, and a carrier without one ends calls by ending the stream.
        self.controls = dict(controls or {})
        #: The latest calls, newest last (benchmarks, the demo's transcript, tests read them).
        self.recent: deque[Call] = deque(maxlen=RECENT_CALLS)
        #: line -> a listener for that call's events (ivr.call.events) or None; the server's web
        #: phone and capture set it.
        self.listen: Callable[[Line], Listener | None] | None = None
        #: Given to each call (see Call.before_greeting); the server's outbound routes set it.
        self.before_greeting = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "CallFactory":
        from ivr.call.options import call_options
        from ivr.config import ConfigError
        from ivr.flows import FlowError, load_flow

        try:
            flow = load_flow(settings.flow or None)
        except FlowError as exc:
            raise ConfigError(f"IVR_FLOW: {exc}", hint=f"{exc.hint}; or unset IVR_FLOW for the example bot") from None
        options = replace(call_options(flow.extra), playout_lead_ms=settings.playout_lead_ms)
        try:
            controls = controls_from_env()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(build(settings), options, controls=controls, marks=settings.marks)

    def __call__(self, line: Line) -> Call:
        listener = self.listen(line) if self.listen is not None else None
        rate = clock_rate(line.parameters)
        if rate != 1.0:
            line.log.info("the caller's clock runs %g times real time (a replay): so does the bot's", rate)
        control = self.controls.get(getattr(line, "carrier", "twilio"))
        call = Call(line, self.providers, self.options, self.cache, control, listener=listener, marks=self.marks,
                    time=WallTime(rate))
        call.before_greeting = self.before_greeting
        self.recent.append(call)
        return call

    async def startup(self) -> None:
        """Load the engines and render the greeting, so the first caller waits for neither."""
        t0 = time.monotonic()
        await self.providers.load()
        session = await self.providers.brain.open(CallContext())
        splitter = TextSplitter(self.options.split)
        pieces: list[str] = []
        async for out in session.greeting():
            if isinstance(out, TextDelta):
                pieces += splitter.push(out.text)
        pieces += splitter.flush()
        await session.aclose()
        for text in pieces:
            await self.render(text)
        if self.controls:
            log.info("hang-ups and transfers through the call control of: %s", ", ".join(sorted(self.controls)))
        log.info("calls of %s end or move on by their stream ending (no call control configured)",
                 "every carrier" if not self.controls else "the other carriers")
        log.info("engines ready and %d greeting piece(s) cached in %.1f s", len(pieces), time.monotonic() - t0)

    async def render(self, text: str) -> None:
        from ivr.audio import PhoneEncoder

        stream = self.providers.tts.stream()
        await stream.push(text)
        await stream.end()
        frames: list[bytes] = []
        encoder = None
        async for chunk in stream:
            if chunk.audio:
                if encoder is None:
                    encoder = PhoneEncoder(8000 if chunk.encoding == "ulaw" else chunk.sample_rate)
                frames += encoder.push_ulaw(chunk.audio) if chunk.encoding == "ulaw" else encoder.push(chunk.audio)
        if encoder is not None:
            frames += encoder.flush()
        self.cache.put(text, frames)
