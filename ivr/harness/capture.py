"""Twilio captures: the inbound messages of one call, as JSON lines, replayable by `ivr replay`.

Format (one file per call, UTF-8, one JSON object per line):

    {"t_ms": 0, "msg": "{\"event\":\"connected\",...}"}
    {"t_ms": 3, "msg": "{\"event\":\"start\",...}"}
    {"t_ms": 25, "msg": "{\"event\":\"media\",...}"}

- `t_ms`: when the message was received, in milliseconds since the WebSocket was accepted
  (a monotonic clock; an integer or a number with a fraction);
- `msg`: the WebSocket text frame exactly as received, as a string (not re-encoded, so a capture
  of a malformed message replays the same malformation to the parser).
A binary WebSocket frame (which Twilio never sends, but a capture keeps what arrived) is written
as `{"t_ms": ..., "msg_b64": "<base64 of the bytes>"}` instead of `msg`.
Files are named `<UTC time>-<callSid or stream id>.jsonl`. The server also writes, between them,
so that its call viewer (/calls) can draw the call's timeline:
    {"t_ms": 40, "out": "{\"event\":\"media\",...}"}   a message the server sent, as sent
    {"t_ms": 41, "event": {"type": "bot", ...}}         a call event (ivr.call.events)
`read_capture` (and so `ivr replay`) skips both: the replay plays Twilio's side again itself.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import orjson

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CaptureWriter:
    """Writes one call's capture. Buffered; a server writes from its event loop at 50 lines a second."""

    def __init__(self, path: Path, file: IO[bytes]) -> None:
        self.path = path
        self._file = file

    @classmethod
    def open(cls, directory: str | Path, call_sid: str = "", stream_sid: str = "") -> "CaptureWriter":
        """Create the capture file for one call in `directory` (created if missing)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ident = _UNSAFE.sub("_", call_sid or stream_sid or "call")[:64]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = directory / f"{stamp}-{ident}.jsonl"
        n = 1
        while path.exists():
            n += 1
            path = directory / f"{stamp}-{ident}-{n}.jsonl"
        return cls(path, open(path, "xb"))

    def write(self, t_ms: float, message: str | bytes) -> None:
        if self._file.closed:
            return
        t = int(t_ms) if float(t_ms).is_integer() else round(float(t_ms), 3)
        if isinstance(message, str):
            entry = {"t_ms": t, "msg": message}
        else:
            entry = {"t_ms": t, "msg_b64": base64.b64encode(message).decode("ascii")}
        self._file.write(orjson.dumps(entry) + b"\n")

    def write_out(self, t_ms: float, message: str) -> None:
        """A message the server sent (for the call viewer; replays skip it)."""
        if not self._file.closed:
            self._file.write(orjson.dumps({"t_ms": round(float(t_ms), 3), "out": message}) + b"\n")

    def write_event(self, t_ms: float, event: dict) -> None:
        """A call event (ivr.call.events) for the call viewer; replays skip it."""
        if not self._file.closed:
            self._file.write(orjson.dumps({"t_ms": round(float(t_ms), 3), "event": event}) + b"\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "CaptureWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    t_ms: float
    text: str | bytes  # bytes for a binary frame


class CaptureFormatError(ValueError):
    pass


def read_capture(path: str | Path) -> Iterator[CapturedMessage]:
    """The messages of a capture file, in order. Blank lines are skipped."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
                if isinstance(entry, dict) and ("out" in entry or "event" in entry) and "msg" not in entry:
                    continue  # the server's side, for its call viewer
                t_ms = entry["t_ms"]
                text = entry["msg"] if "msg" in entry else base64.b64decode(entry["msg_b64"], validate=True)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise CaptureFormatError(f"{path}:{number}: not a capture line {{\"t_ms\": ..., \"msg\": \"...\"}}") from None
            if not isinstance(text, (str, bytes)) or not isinstance(t_ms, (int, float)) or isinstance(t_ms, bool):
                raise CaptureFormatError(f"{path}:{number}: t_ms must be a number and msg a string")
            yield CapturedMessage(float(t_ms), text)


def is_capture(path: str | Path) -> bool:
    """A file whose first non-blank line is a capture line."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    entry = orjson.loads(line)
                    return isinstance(entry, dict) and "t_ms" in entry and ("msg" in entry or "msg_b64" in entry)
    except (OSError, orjson.JSONDecodeError, UnicodeDecodeError):
        return False
    return False
