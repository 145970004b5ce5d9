"""The WebSocket protocol uvicorn runs for this server: uvicorn's own sans-I/O one, with two
changes for the messages every call receives 50 times a second.

- Its receive queue is bound to the loop once (ivr.loopbound): the ASGI receive of every caller
  frame waits on it, and on Python 3.11 each wait cost a getpid() system call.
- A client's plain data frame (whole, masked, no extension, no message in fragments) is
  unmasked here and handed to uvicorn's own delivery (`send_receive_event_to_app`: the same
  ASGI message, UTF-8 check, discard after our close and flow control). `websockets`' parser
  walks a generator and builds a Frame object for each, about a tenth of the server's CPU at
  150 calls. Every other frame (control frames, fragments, reserved bits, anything malformed
  or over the size limit) goes to `websockets` whole, as it would have, so the protocol's
  rules and close codes stay theirs. Frames are split here only on connections whose opening
  request ended a read exactly, so `websockets` is known to stand at a frame boundary.
- uvicorn stops reading the socket after every message and starts again once the application
  has taken it: two changes to the event loop's poller per caller frame (2 % of the server's
  CPU at 150 calls). Here reading stops once `ws_max_queue` messages wait (uvicorn's own
  setting, which its sans-I/O protocol does not use), and starts again when they are taken.
"""

from __future__ import annotations

import asyncio
import functools
import struct

from websockets.protocol import State

from ivr import loopbound

try:  # websockets' C extension, present in its wheels
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

OP_TEXT, OP_BINARY = 0x1, 0x2
_unpack_q = struct.Struct("!Q").unpack_from
#: The opcodes RFC 6455 defines: continuation, text, binary, close, ping, pong.
_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))

#: What `frame_at` says of the bytes at a position.
INCOMPLETE = None


def frame_at(data: bytes, pos: int, max_size: int) -> tuple[int, int, int] | None:
    """The client frame starting at `pos`: (first header byte, payload start, frame end), with
    the 4-byte mask just before the payload; None while it has not all arrived. Returns
    (first byte, -1, -1) for a frame that must not wait to be whole: an unknown opcode, unmasked
    (both protocol errors) or over `max_size`; `websockets` fails the connection on its header
    alone, before the payload arrives."""
    end = len(data)
    if end - pos < 2:
        return INCOMPLETE
    b0, b1 = data[pos], data[pos + 1]
    if b0 & 0x0F not in _OPCODES or not b1 & 0x80:
        return b0, -1, -1
    n = b1 & 0x7F
    head = 2
    if n == 126:
        if end - pos < 4:
            return INCOMPLETE
        n = (data[pos + 2] << 8) | data[pos + 3]
        head = 4
    elif n == 127:
        if end - pos < 10:
            return INCOMPLETE
        n = _unpack_q(data, pos + 2)[0]
        head = 10
    if n > max_size:
        return b0, -1, -1
    start = pos + head + 4
    if end - start < n:
        return INCOMPLETE
    return b0, start, start + n


@functools.cache
def websocket_protocol() -> type[asyncio.Protocol] | str:
    """The class for uvicorn.Config(ws=...); "auto" (uvicorn's choice, unchanged) when this
    uvicorn has no sans-I/O protocol."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return "auto"

    class MediaWebSocketProtocol(WebSocketsSansIOProtocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            queue = getattr(self, "queue", None)
            if type(queue) is asyncio.Queue and queue.empty():
                self.queue = loopbound.Queue()
            #: Frames are split here (see the module's docstring).
            self.own_frames = False
            self._rest = b""  # the start of a frame whose end has not arrived

        def data_received(self, data: bytes) -> None:
            if self.own_frames:
                self._split(data)
                return
            connecting = self.conn.state is State.CONNECTING
            super().data_received(data)
            if (connecting and self.handshake_initiated and data.endswith(b"\r\n\r\n")
                    and not self.conn.reader.buffer and not self.conn.extensions
                    and self.conn.parser_exc is None and hasattr(self.conn, "current_size")):
                self.own_frames = True

        def send_receive_event_to_app(self) -> None:
            paused, self.read_paused = self.read_paused, True  # so uvicorn's own does not pause
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = paused
            if not paused and self.queue.qsize() >= self.config.ws_max_queue and not self.transport.is_closing():
                self.read_paused = True
                self.transport.pause_reading()

        def _split(self, data: bytes) -> None:
            if self._rest:
                data = self._rest + data
                self._rest = b""
            conn, limit, pos, end = self.conn, self.config.ws_max_size, 0, len(data)
            view = memoryview(data)  # the payload is unmasked straight from the read buffer
            while pos < end:
                bounds = frame_at(data, pos, limit)
                if bounds is INCOMPLETE:
                    self._rest = data[pos:]
                    return
                b0, start, stop = bounds
                if start < 0:
                    break
                opcode = b0 & 0x0F
                if ((b0 & 0xF0) == 0x80 and (opcode == OP_TEXT or opcode == OP_BINARY)
                        and conn.state is State.OPEN and conn.current_size is None):
                    self.curr_msg_data_type = "text" if opcode == OP_TEXT else "bytes"
                    self.frames = [apply_mask(view[start:stop], data[start - 4:start])]
                    self.send_receive_event_to_app()
                    pos = stop
                    if conn.state is State.OPEN and not self.transport.is_closing():
                        continue
                    break  # uvicorn closed for a text frame that was not UTF-8
                super().data_received(data[pos:stop])
                pos = stop
                if conn.state is not State.OPEN or conn.parser_exc is not None:
                    break
            else:
                return
            # Whatever follows a closing handshake or a broken frame is `websockets`' alone.
            self.own_frames = False
            if pos < end:
                super().data_received(data[pos:])

    return MediaWebSocketProtocol
