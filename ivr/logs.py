"""Logging set-up, and a per-call logger that tags every line with the call's ids."""

from __future__ import annotations

import logging
import time

from ivr.telephony.twilio import ProtocolError

#: After this many log lines for one kind of protocol error in one call, log only every Nth.
ERROR_LOG_BURST = 10
ERROR_LOG_EVERY = 100


def setup(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
