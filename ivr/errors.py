"""What the `ivr` command says when it fails: one or two plain lines naming the file or setting
and the fix, and an exit status; the traceback only with `--debug` (or IVR_LOG_LEVEL=debug).

A mistake a user can fix (a setting, a file, the network) gets its own words here; anything else
is a fault of ours and says how to see the traceback.
"""

from __future__ import annotations

import socket
from typing import Iterator

#: Exit status of a mistake in the command, its settings or its files; and of anything else.
USAGE = 2
FAILURE = 1


class UserError(Exception):
    """A mistake the user can fix: `str()` names what is wrong; `hint`, when given, the fix;
    `status`, the command's exit status."""

    def __init__(self, message: str, hint: str = "", status: int = USAGE) -> None:
        super().__init__(message)
        self.hint = hint
        self.status = status


def explain(exc: BaseException, command: str) -> tuple[list[str], int]:
    """The lines to print (without a traceback) and the exit status for `exc`."""
    prefix = f"ivr {command}: " if command else "ivr: "
    if isinstance(exc, UserError):
        return _lines(prefix + one_line(str(exc)), exc.hint), exc.status
    missing = _file_error(exc)
    if missing is not None:
        return _lines(prefix + missing, "check the path (relative paths start from the current directory)"), USAGE
    network = _network_error(exc)
    if network is not None:
        return _lines(prefix + network, "check the network connection and the service's URL setting"), FAILURE
    return _lines(
        prefix + f"unexpected error: {type(exc).__name__}: {one_line(str(exc)) or '(no message)'}",
        "run the command again with --debug to see where it happened, and report it",
    ), FAILURE


def one_line(text: str) -> str:
    return " ".join(text.split())


def _lines(first: str, hint: str) -> list[str]:
    return [first, f"  fix: {hint}"] if hint else [first]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _file_error(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.filename and not isinstance(exc, ConnectionError):
        reason = (exc.strerror or str(exc)).lower()
        return f"cannot open {exc.filename}: {reason}"
    return None


def _network_error(exc: BaseException) -> str | None:
    """A failure to reach a server, wherever it sits in the chain of causes."""
    for err in _chain(exc):
        if isinstance(err, socket.gaierror):
            return f"cannot reach the server: its name does not resolve ({err.strerror or err})"
        if isinstance(err, (ConnectionError, TimeoutError)) or type(err).__name__ in _NETWORK_ERRORS:
            detail = one_line(str(err)) or type(err).__name__
            return f"cannot reach the server: {detail}"
    return None


#: Connection failures of the HTTP clients ivr uses (by name: each is optional here).
_NETWORK_ERRORS = frozenset({
    "ClientConnectorError", "ClientConnectorDNSError", "ServerDisconnectedError", "ConnectError", "ConnectTimeout",
    "InvalidURI", "InvalidHandshake", "ConnectionClosedError",
})
