"""Client WebSocket frames written straight to a `websockets` connection's transport (RFC 6455,
5.2-5.3), for the messages sent every 20-40 ms of every call.

Through `websockets`' `send()` each message enters an async context, asks the OS for a fresh
4-byte mask (a system call) and walks the protocol's state machine: several times the cost of
building the frame. A client data frame is only a header, a mask and the masked payload, so it
is built here with masks drawn from the OS a few thousand at a time, and written when the
connection is open and its transport is not backed up. Otherwise the caller sends the usual
way, which waits for the buffer to drain and reports a closed connection as `websockets` does.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Callable

from websockets.protocol import State

try:  # websockets' C extension, present in its wheels
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

OP_TEXT, OP_BINARY = 0x1, 0x2
_FIN = 0x80
_MASKED = 0x80
_MASK_BATCH = 4096
#: Above this much unsent data the message goes through `send()`, which waits for the socket:
#: websockets' own high-water mark for its writes.
WRITE_LIMIT = 64 * 1024


def _mask_batch() -> list[bytes]:
    pool = os.urandom(_MASK_BATCH)
    return [pool[i : i + 4] for i in range(0, _MASK_BATCH, 4)]


def mask_source() -> Callable[[], bytes]:
    """Unpredictable 4-byte masking keys (RFC 6455, 5.3), one read of the OS's randomness per
    thousand keys rather than one per frame. Each key is one step of a C iterator: no Python
    frame per key, which a load run pays for every frame of every call."""
    return itertools.chain.from_iterable(iter(_mask_batch, None)).__next__


next_mask = mask_source()


_head7 = struct.Struct("!BB4s").pack
_head16 = struct.Struct("!BBH4s").pack
_head64 = struct.Struct("!BBQ4s").pack


def client_frame(payload: bytes, mask: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unfragmented, masked frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        head = _head7(_FIN | opcode, _MASKED | n, mask)
    elif n < 1 << 16:
        head = _head16(_FIN | opcode, _MASKED | 126, n, mask)
    else:
        head = _head64(_FIN | opcode, _MASKED | 127, n, mask)
    return head + apply_mask(payload, mask)


def write_now(ws, payload: bytes, opcode: int = OP_BINARY) -> bool:
    """Write one message on `ws` (a websockets client connection without compression) at once;
    False, having written nothing, if it is not open or its transport is backed up."""
    transport = ws.transport
    if ws.protocol.state is not State.OPEN or transport.is_closing() or transport.get_write_buffer_size() > WRITE_LIMIT:
        return False
    transport.write(client_frame(payload, next_mask(), opcode))
    return True
