"""RFC 6455 framing for the harness's client side, sans I/O: the server's frames in.

The load generator reads the bot's audio as one message per 20 ms frame per call. Through a
general WebSocket library each message walks a state machine, a queue with a future and a task
switch; several times the cost of the message itself. A server's frames are simple (a header and
the unmasked payload), so they are parsed here and `wsclient` hands the messages on from the
transport's `data_received`. The client's own frames (masked) are built by `ivr.wsframes`,
which the cloud adapters share.
"""

from __future__ import annotations

import struct

from websockets.exceptions import ProtocolError as _CloseError
from websockets.frames import Close

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_FIN = 0x80
_MASKED = 0x80
#: Close codes (RFC 6455, 7.4.1) the reader fails a connection with.
PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG = 1002, 1007, 1009
_unpack_q = struct.Struct("!Q").unpack_from


class FrameError(Exception):
    """The server broke the framing: fail the connection with `code` (RFC 6455, 7.1.7)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.before: list[tuple[int, str | bytes]] = []


def parse_close(payload: bytes) -> Close:
    """A close frame's code and reason (1005 when it has none), or FrameError."""
    try:
        return Close.parse(payload)
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not UTF-8") from None
    except _CloseError as exc:
        raise FrameError(PROTOCOL_ERROR, str(exc)) from None


class FrameReader:
    """The server's frames, fed as the bytes arrive however they are split; out come whole
    messages and control frames as (opcode, payload): text as str, the rest as bytes.

    No extension is negotiated, so the reserved bits must be clear; a server never masks
    (RFC 6455, 5.1); control frames are short and whole, and may fall between the fragments
    of a message (5.4, 5.5). A frame that breaks these raises FrameError."""

    __slots__ = ("max_size", "_rest", "_parts", "_part_op", "_part_len")

    def __init__(self, max_size: int = 2**24) -> None:
        self.max_size = max_size
        self._rest = b""  # the start of a frame whose end has not arrived
        self._parts: list[bytes] = []  # fragments of the message being assembled
        self._part_op = 0  # its opcode, 0 when no message is in fragments
        self._part_len = 0

    def feed(self, data: bytes) -> list[tuple[int, str | bytes]]:
        """Whole messages and control frames in `data` (with what came before it). A FrameError
        carries the messages before the bad frame in `before`."""
        if self._rest:
            data = self._rest + data
        out: list[tuple[int, str | bytes]] = []
        try:
            self._parse(data, out)
        except FrameError as exc:
            exc.before = out
            raise
        return out

    def _parse(self, data: bytes, out: list) -> None:
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = _unpack_q(data, pos + 2)[0]
                head = 10
                if n >> 63:
                    raise FrameError(PROTOCOL_ERROR, "payload length with its top bit set")
            if b1 & _MASKED:
                raise FrameError(PROTOCOL_ERROR, "a masked frame from the server")
            if b0 & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set with no extension")
            if n > self.max_size:
                raise FrameError(MESSAGE_TOO_BIG, f"a frame of {n} bytes")
            start = pos + head
            if end - start < n:
                break
            pos = start + n
            opcode, fin = b0 & 0x0F, b0 & _FIN
            if opcode & 0x08:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
                if not fin or n > 125:
                    raise FrameError(PROTOCOL_ERROR, "a fragmented or long control frame")
                out.append((opcode, data[start:pos]))
            elif fin and (opcode == OP_TEXT or opcode == OP_BINARY) and not self._part_op:
                out.append((opcode, _message(opcode, memoryview(data)[start:pos])))
            else:
                message = self._fragment(opcode, fin, data[start:pos])
                if message is not None:
                    out.append(message)
        self._rest = data[pos:] if pos < end else b""

    def _fragment(self, opcode: int, fin: int, payload: bytes) -> tuple[int, str | bytes] | None:
        if opcode not in (OP_CONT, OP_TEXT, OP_BINARY):
            raise FrameError(PROTOCOL_ERROR, f"reserved opcode {opcode:#x}")
        if (opcode == OP_CONT) != bool(self._part_op):
            raise FrameError(PROTOCOL_ERROR, "a continuation with no message begun" if opcode == OP_CONT
                             else "a new message before the last one ended")
        if opcode:
            self._part_op = opcode
        self._part_len += len(payload)
        if self._part_len > self.max_size:
            raise FrameError(MESSAGE_TOO_BIG, f"a message of over {self.max_size} bytes")
        self._parts.append(payload)
        if not fin:
            return None
        opcode, whole = self._part_op, b"".join(self._parts)
        self._parts, self._part_op, self._part_len = [], 0, 0
        return opcode, _message(opcode, whole)


def _message(opcode: int, payload) -> str | bytes:
    if opcode == OP_TEXT:
        try:
            return str(payload, "utf-8")  # straight from the read buffer, no bytes copy first
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "a text message that is not UTF-8") from None
    return bytes(payload)
