"""When the caller talks over the bot: go quiet at once, then either carry on or give the turn up.

Callers murmur ("uh-huh", "okay"), cough, and their lines crackle; a bot that throws its sentence
away at every sound stutters. So speech over the bot first only *pauses* it; the turn is kept
until the interruption is confirmed:

- words that are not all backchannels ("wait, what about Sunday") confirm it: the turn is
  cancelled and the history keeps only what was heard;
- so does speech that goes on past `confirm_after_ms`, whatever the recogniser makes of it;
- backchannel words, or none at all (a cough, noise) once the caller is quiet again for
  `resume_after_ms`, are a false alarm: the bot carries on from the exact frame where it went
  quiet, so no word is said twice;
- a sound shorter than `short_ms` is taken for a murmur as soon as the caller is quiet, before
  the recogniser has its words (that wait alone can pass a second on a busy machine): if the
  words then turn out to be a real turn, the bot is stopped again and answers it, as for any
  caller who speaks while it talks.

How the bot goes quiet, measured with `ivr bench call --only barge-in --only backchannel
--barge-ins 20 --backchannels 12` (embedded engines, loopback, 300 ms lead, a busy 2-core host):

- `clear` and resume at the cut frame (the default): the carrier drops what it had queued at
  once, so the caller hears the bot stop within the recogniser's onset delay plus one network
  trip: speech start -> bot quiet as heard p50 64 ms, p95 103 ms (n=18). The playout clock names
  the frame that was playing; a false alarm sends again from there (at most half a frame, 10 ms,
  is replayed or skipped). The cost: the frames of the lead are sent twice over the network.
- not feeding the line ("starve"): nothing is dropped and nothing resent, but what is queued at
  the carrier plays on: bot quiet as heard p50 323 ms, p95 350 ms (n=20): the lead, added to
  every stop, outside the 250 ms budget for any lead that absorbs real network jitter; and the
  caller talks over more of the bot's words (for murmurs, p50 372 ms before it went quiet).

So `clear` wins wherever the carrier has it. A carrier without `clear` (raw RTP, Asterisk
AudioSocket) pauses by not feeding, with the same clock and the same verdicts; there the lead
is the price of the stop.

The classes here are pure: times are seconds handed in by the engine.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

#: Not "yes" or "sure": cutting in with those usually answers the bot's question.
#: Recognisers spell murmurs many ways ("Uh-huh." often comes out "Ah." or "Mm-hm.", and under
#: load the embedded Whisper once heard it as "I, ah,"): alone, "ah", "oh", "uh" and "um" are no
#: answer either, nor is a bare "I" among them (a false start; "I need..." has other words).
DEFAULT_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mm-hm", "mhm", "mm", "hmm", "hm", "aha", "ah", "oh", "uh", "um", "i",
    "okay", "ok", "yeah", "yep", "right", "i see", "got it", "alright", "all right",
)  # fmt: skip

#: Everything but letters, digits, apostrophes and hyphens ("uh-huh"): backchannels ignore punctuation.
_NOT_A_WORD = re.compile(r"[^\w\s'-]")


def words_of(text: str) -> str:
    """Lower-case words only: the recogniser guesses punctuation ("Okay." or "Okay?")."""
    return " ".join(_NOT_A_WORD.sub(" ", text.lower()).split())


def is_backchannel(text: str, backchannels: frozenset[str] | set[str]) -> bool:
    """Only acknowledgements, or no words at all."""
    words = words_of(text)
    if not words:
        return True
    return words in backchannels or all(w in backchannels for w in words.split())


class Verdict(enum.Enum):
    WAIT = "wait"
    RESUME = "resume"  # a false alarm: carry on from where the bot went quiet
    CANCEL = "cancel"  # a real interruption: the turn is given up


@dataclass(frozen=True)
class InterruptionRules:
    backchannels: frozenset[str]
    #: Speech over the bot lasting this long is an interruption whatever its words.
    confirm_after_ms: int = 1500
    #: With no words heard, a caller quiet again this long was a false alarm.
    resume_after_ms: int = 900
    #: False: any speech over the bot cancels the turn at once (nothing is resumed).
    resume: bool = True
    #: Speech over the bot shorter than this resumes as soon as the caller is quiet.
    short_ms: int = 700


class Interruption:
    """One pause of one bot turn, from the caller's first sound to its verdict."""

    def __init__(self, rules: InterruptionRules, at: float) -> None:
        self.rules = rules
        self.started_at = at
        self.text = ""
        self._quiet_since: float | None = None
        self.verdict = Verdict.WAIT if rules.resume else Verdict.CANCEL

    def heard(self, text: str, turn_over: bool, speaking: bool, at: float) -> Verdict:
        """Words of the interruption (a Final, or the EndOfTurn's whole text when `turn_over`)."""
        if self.verdict is not Verdict.WAIT:
            return self.verdict
        self.text = text if turn_over else f"{self.text} {text}".strip()
        if not is_backchannel(self.text, self.rules.backchannels):
            self.verdict = Verdict.CANCEL
        elif turn_over or (words_of(self.text) and not speaking):
            self.verdict = Verdict.RESUME
        return self.verdict

    def tick(self, speaking: bool, at: float) -> Verdict:
        """The clock moved on; `speaking`: the caller is speaking now, as the VAD hears it."""
        if self.verdict is not Verdict.WAIT:
            return self.verdict
        if speaking:
            self._quiet_since = None
            if (at - self.started_at) * 1000 >= self.rules.confirm_after_ms:
                self.verdict = Verdict.CANCEL
            return self.verdict
        if self._quiet_since is None:
            self._quiet_since = at
        short = (self._quiet_since - self.started_at) * 1000 < self.rules.short_ms
        if short or (at - self._quiet_since) * 1000 >= self.rules.resume_after_ms:
            self.verdict = Verdict.RESUME  # quiet again, and whatever it was had no words (yet)
        return self.verdict
