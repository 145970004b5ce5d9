"""The conversation engine's options from a call-flow file's engine sections.

```yaml
barge_in:
  enabled: true            # the caller may talk over the bot
  min_speech_ms: 0         # speech must last this long to stop the bot (0: at once)
  resume: true             # after a false interruption (only backchannel words, or none)
  backchannels: [uh-huh, okay, yeah, right]
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

from typing import Any, Mapping

from ivr.call.engine import CallOptions
from ivr.call.splitter import SplitOptions
from ivr.config import ConfigError

_SECTIONS = {
    "barge_in": {"enabled", "min_speech_ms", "resume", "backchannels"},
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
        backchannels=tuple(b.lower() for b in backchannels),
        reprompt_after_ms=int(_number(silence, "reprompt_after", "silence", base.reprompt_after_ms / 1000) * 1000),
        max_reprompts=int(_number(silence, "max_reprompts", "silence", base.max_reprompts)),
        goodbye=str(silence.get("goodbye", base.goodbye)),
        max_call_ms=int(_number(silence, "max_call_minutes", "silence", base.max_call_ms / 60000) * 60000),
    )
