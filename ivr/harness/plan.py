"""What the caller does, as steps the emulator runs on the call clock. Every call source
(recording, capture, call script) becomes a `CallPlan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

#: How long a step waits for the bot before giving up (recorded as a `timeout` error).
DEFAULT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class After:
    """When a step starts.

    - `now`: at once;
    - `pause S`: S seconds after the previous step ended;
    - `at S`: at S seconds of call time;
    - `bot_silent S`: once the bot has spoken since the caller's last speech and has then been
      silent for S seconds (the bot's greeting counts before the first caller turn);
    - `bot_speaking S`: S seconds after the bot starts speaking (since the caller's last speech):
      a barge-in when S is shorter than what the bot says.
    """

    kind: str = "now"
    seconds: float = 0.0
    timeout: float = DEFAULT_TIMEOUT_S

    KINDS = ("now", "pause", "at", "bot_silent", "bot_speaking")

    @classmethod
    def parse(cls, value: object, timeout: float | None = None) -> "After":
        t = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        if value is None:
            return cls("now", 0.0, t)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls("pause", float(value), t)
        if isinstance(value, str):
            parts = value.split()
            if parts and parts[0] in cls.KINDS and len(parts) <= 2:
                try:
                    seconds = float(parts[1]) if len(parts) == 2 else 0.0
                except ValueError:
                    pass
                else:
                    if seconds >= 0:
                        return cls(parts[0], seconds, t)
        raise ValueError(
            f"after: {value!r} is not one of 'now', 'pause S', 'at S', 'bot_silent S', 'bot_speaking S'"
        )


@dataclass
class Say:
    """Caller audio (8 kHz mu-law). `segmentation` 'one' = one turn; 'detect' = find turns by energy."""

    ulaw: bytes = field(repr=False)
    text: str | None = None
    after: After = field(default_factory=After)
    segmentation: str = "one"
    wait: bool = True  # wait until it has all been sent before the next step
    label: str = ""


@dataclass
class Dtmf:
    digits: str
    after: After = field(default_factory=After)
    gap_s: float = 0.25  # between digits, as a person keys them


@dataclass
class Wait:
    """Nothing but the wait: a pause (the line carries silence meanwhile)."""

    after: After


@dataclass
class Hangup:
    after: After = field(default_factory=lambda: After("bot_silent", 1.0, 10.0))


Step = Union[Say, Dtmf, Wait, Hangup]


@dataclass
class CallPlan:
    name: str
    kind: str  # "recording" | "capture" | "script"
    source: str
    steps: list[Step]
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.steps or not isinstance(self.steps[-1], Hangup):
            self.steps.append(Hangup())
