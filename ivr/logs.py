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
        masked = _NUMBER.sub(lambda m: mask_number(m.group(0)), message)
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
    """A logger for one call: every line carries call_sid and stream_sid once they are known."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
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

    def protocol_error(self, exc: ProtocolError) -> None:
        """Log a skipped message, without letting a flood of bad frames flood the log."""
        n = self._error_counts.get(exc.kind, 0) + 1
        self._error_counts[exc.kind] = n
        if n <= ERROR_LOG_BURST or n % ERROR_LOG_EVERY == 0:
            self.warning("skipped a malformed message (%s, %d of this kind so far): %s", exc.kind, n, exc.detail)
