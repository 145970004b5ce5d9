"""Turn-taking as a table: (state, event) -> (next state, actions), and the small runner.

The whole machine is the `TABLE` below; the engine (ivr.call.engine) fires events and performs
the actions the runner returns. An event with no row for the current state changes nothing.

- PAUSE: the caller started speaking over the bot: it goes quiet now, keeping its turn;
- RESUME: it was a false alarm (ivr.call.interruption): the bot carries on where it stopped;
- CANCEL: the bot's turn is given up: nothing more of it reaches the line.
"""

from __future__ import annotations

import enum


class CallState(enum.Enum):
    GREETING = "greeting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    PAUSED = "paused"  # the caller spoke over the bot: quiet until the verdict
    TRANSFERRING = "transferring"
    ENDING = "ending"
    ENDED = "ended"


class Event(enum.Enum):
    BOT_TURN = "bot turn"  # a bot turn begins (its words are being made)
    BOT_AUDIO = "bot audio"  # its first frame went to the line
    BOT_DONE = "bot done"  # its audio has played out, by the playout clock
    CALLER_SPEECH = "caller speech"  # the caller started speaking (over the bot or not)
    FALSE_ALARM = "false alarm"  # the speech was a backchannel, a cough, noise
    INTERRUPTED = "interrupted"  # the speech is a real interruption
    CALLER_TURN = "caller turn"  # the caller's words or keys, to be answered
    TRANSFER = "transfer"
    HANG_UP = "hang up"
    CLOSED = "closed"


class Action(enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


S, E, A = CallState, Event, Action
#: The bot has the floor: it is talking, about to, or paused by the caller.
BOT_HAS_FLOOR = (S.GREETING, S.THINKING, S.SPEAKING, S.PAUSED)
_TALKING = (S.GREETING, S.THINKING, S.SPEAKING)

TABLE: dict[tuple[CallState, Event], tuple[CallState, tuple[Action, ...]]] = {
    (S.LISTENING, E.BOT_TURN): (S.THINKING, ()),
    (S.THINKING, E.BOT_TURN): (S.THINKING, ()),
    (S.GREETING, E.BOT_AUDIO): (S.GREETING, ()),
    (S.THINKING, E.BOT_AUDIO): (S.SPEAKING, ()),
    (S.GREETING, E.BOT_DONE): (S.LISTENING, ()),
    (S.THINKING, E.BOT_DONE): (S.LISTENING, ()),  # a turn with nothing to say
    (S.SPEAKING, E.BOT_DONE): (S.LISTENING, ()),
    **{(s, E.CALLER_SPEECH): (S.PAUSED, (A.PAUSE,)) for s in _TALKING},
    (S.PAUSED, E.FALSE_ALARM): (S.SPEAKING, (A.RESUME,)),
    (S.PAUSED, E.INTERRUPTED): (S.LISTENING, (A.CANCEL,)),
    (S.PAUSED, E.BOT_DONE): (S.PAUSED, ()),  # nothing left to say; the verdict still decides
    **{(s, E.CALLER_TURN): (S.THINKING, (A.CANCEL,)) for s in (*_TALKING, S.PAUSED)},
    (S.LISTENING, E.CALLER_TURN): (S.THINKING, ()),
    **{(s, E.TRANSFER): (S.TRANSFERRING, ()) for s in (*_TALKING, S.LISTENING, S.PAUSED, S.ENDING)},
    **{(s, E.HANG_UP): (S.ENDING, ()) for s in (*_TALKING, S.LISTENING, S.PAUSED, S.TRANSFERRING)},
    **{(s, E.CLOSED): (S.ENDED, ()) for s in CallState},
}


class TurnTaking:
    """The runner: holds the state, answers each event with the actions to perform."""

    def __init__(self, state: CallState = CallState.GREETING) -> None:
        self.state = state

    def fire(self, event: Event) -> tuple[Action, ...]:
        row = TABLE.get((self.state, event))
        if row is None:
            return ()
        self.state, actions = row
        return actions
