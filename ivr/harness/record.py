"""Everything one replayed call did, on the call clock: the raw material of every report."""

from __future__ import annotations

from dataclasses import dataclass, field

from ivr.harness.playback import TwilioPlayback
from ivr.harness.voice import Utterance


@dataclass(slots=True)
class CallError:
    ms: float
    kind: str
    detail: str


@dataclass
class CallRecord:
    name: str
    kind: str
    source: str
    url: str
    speed: float
    call_sid: str
    stream_sid: str
    params: dict[str, str]
    started_at: str  # wall-clock ISO time of call time 0, for people
    connected: bool = False
    #: The caller's track exactly as sent: frame k is bytes [160k, 160k + 160), sent at k * 20 ms.
    caller: bytearray = field(default_factory=bytearray, repr=False)
    #: How late each frame went out (send completed minus due time), call-clock ms.
    frame_lag_ms: list[float] = field(default_factory=list, repr=False)
    playback: TwilioPlayback = field(default_factory=TwilioPlayback, repr=False)
    utterances: list[Utterance] = field(default_factory=list, repr=False)
    dtmf: list[tuple[str, float]] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)
    end_ms: float = 0.0
    ended_by: str = ""  # "caller" (hang-up sent) | "bot" (server closed) | "error"
    wall_seconds: float = 0.0
    #: time.monotonic() at call time 0: lines the record up with other processes' timestamps.
    monotonic_start: float = 0.0

    def error(self, ms: float, kind: str, detail: str) -> None:
        self.errors.append(CallError(ms, kind, detail))

    @property
    def failed(self) -> bool:
        """The call did not run to a hang-up by either side."""
        return not self.connected or self.ended_by == "error"
