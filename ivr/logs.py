"""Logging set-up, and a per-call logger that tags every line with the call's ids."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time

import orjson

from ivr.telephony.twilio import ProtocolError

#: After this many log lines for one kind of protocol error in one call, log only every Nth.
ERROR_LOG_BURST = 10
ERROR_LOG_EVERY = 100


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("auto", "json", "text")

#: (call_sid, stream_sid) of the call whose task is running: set by `CallLog.bind` in the stream's
#: task, inherited by every task the call starts, so provider and engine lines carry the ids too.
_call_ids: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("ivr_call_ids", default=None)

#: E.164 numbers, and digit-only SIP users, anywhere in a message (a safety net behind `mask`).
_NUMBER = re.compile(r"(?<![\w+])\+\d{7,15}\b|(?<=sips:)\d{7,15}(?=@)|(?<=sip:)\d{7,15}(?=@)")
#: A number as a URL query value (`?From=%2B15551234567&To=15557654321`, in our lines and in
#: uvicorn's access log): the `+` is percent-encoded there, or missing.
_QUERY_NUMBER = re.compile(r"(?<=[?&;])([^=&#\s\"]{1,64}=)(%2B|\+)?(\d{7,15})(?=[&#\s\"]|$)", re.IGNORECASE)


def mask_numbers(text: str) -> str:
    """`text` with every phone number in it masked (see `mask_number`)."""
    text = _NUMBER.sub(lambda m: mask_number(m.group(0)), text)
    if "=" in text:
        text = _QUERY_NUMBER.sub(_mask_query_value, text)
    return text


def _mask_query_value(m: re.Match) -> str:
    plus = m.group(2) or ""
    return m.group(1) + plus + mask_number("+" + m.group(3))[1:]


def setup(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr: `fmt` json (one object a line, for log collectors), text, or auto (json
    unless stderr is a terminal). Does nothing if logging is already configured (tests)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(CallContextFilter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


class CallContextFilter(logging.Filter):
    """Adds the current call's ids to records that lack them, and masks phone numbers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "call_sid"):
            ids = _call_ids.get()
            if ids is not None:
                record.call_sid, record.stream_sid = ids
        message = record.getMessage()
        masked = mask_numbers(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC), level, logger, msg, call_sid/stream_sid in a call, exc."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        call_sid = getattr(record, "call_sid", None)
        if call_sid is not None:
            stream_sid = getattr(record, "stream_sid", "-")
            # CallLog writes the ids into the text for plain logs; here they are fields.
            prefix = f"[call_sid={call_sid} stream_sid={stream_sid}] "
            if message.startswith(prefix):
                message = message[len(prefix) :]
            doc["call_sid"], doc["stream_sid"] = call_sid, stream_sid
        doc["msg"] = message
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


def mask_number(number: str) -> str:
    """Phone numbers are personal data: keep the country code and the last two digits."""
    if not number:
        return "-"
    if number.startswith(("sip:", "sips:", "client:")):
        scheme, _, rest = number.partition(":")
        user, at, host = rest.partition("@")
        return f"{scheme}:{user[:2]}***{at}{host}" if at else f"{scheme}:***"
    digits = number.lstrip("+")
    if len(digits) <= 4:
        return "***"
    return ("+" if number.startswith("+") else "") + digits[:1] + "*" * (len(digits) - 3) + digits[-2:]


class CallLog:
    """A logger for one call: every line carries call_sid and stream_sid once they are known.

    What the caller says and the keys they press are personal data (a card number keyed in, a
    name, an address): unless `transcripts` (IVR_LOG_TRANSCRIPTS=1), `caller_said` and
    `caller_pressed` log only their length, never the words or the digits."""

    def __init__(self, logger: logging.Logger, transcripts: bool = False) -> None:
        self._logger = logger
        self.transcripts = transcripts
        self.call_sid = "-"
        self.stream_sid = "-"
        self._error_counts: dict[str, int] = {}
        self.started = time.monotonic()

    def bind(self, call_sid: str, stream_sid: str) -> None:
        self.call_sid, self.stream_sid = call_sid, stream_sid
        _call_ids.set((call_sid, stream_sid))

    @staticmethod
    def mask(number: str) -> str:
        return mask_number(number)

    def _log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level,
                "[call_sid=%s stream_sid=%s] " + msg,
                self.call_sid,
                self.stream_sid,
                *args,
                exc_info=exc_info,
                extra={"call_sid": self.call_sid, "stream_sid": self.stream_sid},
            )

    def debug(self, msg: str, *args: object) -> None:
        self._log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self._log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(logging.WARNING, msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        self._log(logging.ERROR, msg, *args, exc_info=True)

    def caller_said(self, text: str) -> None:
        if self.transcripts:
            self.info("caller said: %s", text)
        else:
            self.info("caller said %d word(s) (IVR_LOG_TRANSCRIPTS=1 logs the words)", len(text.split()))

    def caller_pressed(self, digit: str) -> None:
        if self.transcripts:
            self.info("caller pressed %s", digit)
        else:
            self.debug("caller pressed a key")

    def private(self, text: str) -> str:
        """`text` (words of the call) if transcripts are logged, else only its length."""
        return text if self.transcripts else f"<{len(text)} characters>"

    def protocol_error(self, exc: ProtocolError) -> None:
        """Log a skipped message, without letting a flood of bad frames flood the log."""
        self.anomaly(exc.kind, "skipped a malformed message (%s): %s", exc.kind, exc.detail)

    def anomaly(self, kind: str, msg: str, *args: object) -> None:
        """A warning that a sender can repeat at will: the first few of each kind, then one in
        ERROR_LOG_EVERY, each with its running count."""
        n = self._error_counts.get(kind, 0) + 1
        self._error_counts[kind] = n
        if n <= ERROR_LOG_BURST or n % ERROR_LOG_EVERY == 0:
            self.warning(msg + " [%d of this kind so far]", *args, n)
