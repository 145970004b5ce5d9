"""The caller's media frames, written straight to the WebSocket's transport (RFC 6455, 5.2-5.3).

The load generator sends one text message per call every 20 ms. Through the websockets client
each send builds an async context, asks the OS for a fresh 4-byte mask (a getrandom system call)
and walks the protocol's state machine: several times the cost of the message itself. A client
text frame is only a header, a mask and the masked payload, so it is built here and handed to the
transport, with masks drawn from the OS a few thousand at a time. Everything else (the opening
handshake, reading, control frames, closing) stays with websockets.
"""

from __future__ import annotations

import os
import struct

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

try:  # websockets' C extension, present in its wheels
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

_OP_TEXT_FIN = 0x81
_OP_BINARY_FIN = 0x82
_MASKED = 0x80
_MASK_BATCH = 4096


class MaskSource:
    """Unpredictable 4-byte masking keys (RFC 6455, 5.3), one read of the OS's randomness per
    thousand keys rather than one per frame."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos + 4 > len(self._pool):
            self._pool, pos = os.urandom(_MASK_BATCH), 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


def client_text_frame(payload: bytes, mask: bytes, opcode: int = _OP_TEXT_FIN) -> bytes:
    """One unfragmented, masked text (or binary) frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        header = bytes((opcode, _MASKED | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", opcode, _MASKED | 126, n)
    else:
        header = struct.pack("!BBQ", opcode, _MASKED | 127, n)
    return header + mask + apply_mask(payload, mask)


_masks = MaskSource()


def send_text_now(ws: ClientConnection, text: str) -> bool:
    """Write `text` as one frame at once; False if the connection is no longer open.

    The transport buffers what the socket does not take at once, as a real caller's line would
    carry on sending while the server is slow to read."""
    transport = ws.transport
    if ws.protocol.state is not State.OPEN or transport.is_closing():
        return False
    transport.write(client_text_frame(text.encode(), _masks.next()))
    return True


def send_now(connection, message: str | bytes) -> bool:
    """`send_text_now` for any carrier's frame: text, binary (Vonage, Asterisk), or bytes on
    AudioSocket's TCP connection (which has a `send_now` of its own)."""
    own = getattr(connection, "send_now", None)
    if own is not None:
        return own(message)
    if isinstance(message, str):
        return send_text_now(connection, message)
    transport = connection.transport
    if connection.protocol.state is not State.OPEN or transport.is_closing():
        return False
    transport.write(client_text_frame(message, _masks.next(), _OP_BINARY_FIN))
    return True
