"""The conversation engine's options from a call-flow file's engine sections.

```yaml
barge_in:
  enabled: true            # the caller may talk over the bot
  min_speech_ms: 0         # speech must last this long to stop the bot (0: at once)
  resume: true             # after a false interruption (only backchannel words, or none)
  backchannels: [uh-huh, okay, yeah, right]
  confirm_after_ms: 1500   # speech over the bot this long interrupts whatever its words
  pause: clear             # clear (default) or starve: how the bot goes quiet
silence:
  reprompt_after: 8        # seconds of caller silence before a re-prompt
  max_reprompts: 2         # then the goodbye, and the bot hangs up
  goodbye: "It seems we've lost each other. Goodbye."
  max_call_minutes: 30
voice:
  split: clause            # sentence | clause | word | fixed
  first_min_chars: 8       # a short first piece starts speech early
  min_chars: 20
  max_chars: 200
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from ivr.call.interruption import DEFAULT_BACKCHANNELS
from ivr.call.splitter import SplitOptions
from ivr.config import ConfigError


@dataclass(frozen=True)
class CallOptions:
    split: SplitOptions = field(default_factory=SplitOptions)
    #: The caller may talk over the bot (speech pauses the bot at once; see ivr.call.interruption).
    barge_in: bool = True
    #: Speech must last this long (ms of caller audio) before it pauses the bot; 0: at once.
    min_speech_ms: int = 0
    #: Words that, alone, are acknowledgements rather than turns: such an utterance (or no words
    #: at all: a cough) over the bot is a false alarm, and the bot carries on where it stopped.
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    resume_after_false_interruption: bool = True
    #: Speech over the bot this long is an interruption whatever its words.
    confirm_after_ms: int = 1500
    #: Speech with no words, once the caller is quiet this long, was a false alarm.
    resume_after_ms: int = 900
    #: How the bot goes quiet for speech over it: "clear" (drop the carrier's queue, resend from
    #: the cut frame on a false alarm) or "starve" (stop feeding; the queue plays out). A carrier
    #: without clear always starves.
    pause: Literal["clear", "starve"] = "clear"
    #: How far ahead of the caller's ear the bot's audio is sent (the carrier's jitter margin).
    playout_lead_ms: int = 300
    #: A mark echoed this much later than the playout clock expects is not waited for.
    mark_margin_ms: int = 500
    #: Caller silence (after the bot has finished) before a re-prompt, and how many re-prompts
    #: before the bot says goodbye.
    reprompt_after_ms: int = 8000
    max_reprompts: int = 2
    max_call_ms: int = 30 * 60 * 1000
    goodbye: str = "It seems we've lost each other. Thank you for calling, goodbye."
    time_limit_goodbye: str = "I'm sorry, we have reached the time limit for this call. Goodbye."
    #: The longest the bot waits for its last words to play before a hang-up or transfer (the
    #: playout clock normally ends the wait a mark margin after the audio ends).
    goodbye_timeout_ms: int = 15000

    def __post_init__(self) -> None:
        if self.pause not in ("clear", "starve"):
            raise ValueError(f"pause must be clear or starve, not {self.pause!r}")

_SECTIONS = {
    "barge_in": {"enabled", "min_speech_ms", "resume", "backchannels", "confirm_after_ms", "pause"},
    "silence": {"reprompt_after", "max_reprompts", "goodbye", "max_call_minutes"},
    "voice": {"split", "first_min_chars", "min_chars", "max_chars"},
}


def _section(extra: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    data = extra.get(name) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"flow: '{name}' must be a mapping")
    unknown = set(data) - _SECTIONS[name]
    if unknown:
        raise ConfigError(f"flow: unknown key(s) {sorted(unknown)} in '{name}' (known: {sorted(_SECTIONS[name])})")
    return data


def _number(data: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"flow: {where}.{key} must be a non-negative number, not {value!r}")
    return value


def _pause(value: Any) -> str:
    if value not in ("clear", "starve"):
        raise ConfigError(f"flow: barge_in.pause must be clear or starve, not {value!r}")
    return value


def call_options(extra: Mapping[str, Any]) -> CallOptions:
    base = CallOptions()
    barge = _section(extra, "barge_in")
    silence = _section(extra, "silence")
    voice = _section(extra, "voice")
    backchannels = barge.get("backchannels", base.backchannels)
    if not isinstance(backchannels, (list, tuple)) or not all(isinstance(b, str) for b in backchannels):
        raise ConfigError("flow: barge_in.backchannels must be a list of words or phrases")
    try:
        split = SplitOptions(
            strategy=voice.get("split", base.split.strategy),
            first_min_chars=int(_number(voice, "first_min_chars", "voice", base.split.first_min_chars)),
            min_chars=int(_number(voice, "min_chars", "voice", base.split.min_chars)),
            max_chars=int(_number(voice, "max_chars", "voice", base.split.max_chars)),
        )
    except ValueError as exc:
        raise ConfigError(f"flow: voice: {exc}") from None
    return CallOptions(
        split=split,
        barge_in=bool(barge.get("enabled", base.barge_in)),
        min_speech_ms=int(_number(barge, "min_speech_ms", "barge_in", base.min_speech_ms)),
        resume_after_false_interruption=bool(barge.get("resume", base.resume_after_false_interruption)),
        confirm_after_ms=int(_number(barge, "confirm_after_ms", "barge_in", base.confirm_after_ms)),
        pause=_pause(barge.get("pause", base.pause)),
        backchannels=tuple(b.lower() for b in backchannels),
        reprompt_after_ms=int(_number(silence, "reprompt_after", "silence", base.reprompt_after_ms / 1000) * 1000),
        max_reprompts=int(_number(silence, "max_reprompts", "silence", base.max_reprompts)),
        goodbye=str(silence.get("goodbye", base.goodbye)),
        max_call_ms=int(_number(silence, "max_call_minutes", "silence", base.max_call_ms / 60000) * 60000),
    )
