"""The harness's WebSocket client connection: Twilio's end of a media stream (RFC 6455).

The bot's messages go from the transport's `data_received` through `wsframe.FrameReader`
straight into the emulator's handler: no queue, no future and no task switch per message, which
is what a general client costs per message and what a load run does 50 times a second per call.
Caller frames are written to the transport at once, masked. Pings are answered, the closing
handshake runs both ways (the client waits for the server to close TCP, 7.1.1), and a server
that breaks the framing has its connection failed with the matching close code.

The opening handshake is websockets' own (request built and response checked by its sans-I/O
`ClientProtocol`); only the frames after it are read here. Errors and close outcomes are
websockets' exception types, so callers tell a clean close from an abnormal one as before.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Callable, Mapping

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidHandshake
from websockets.frames import OK_CLOSE_CODES, Close
from websockets.uri import parse_uri

from ivr.harness.wsframe import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameError, FrameReader, parse_close
from ivr.wsframes import client_frame, next_mask

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 1 << 16
_NORMAL = 1000
_NO_STATUS = 1005  # a close frame with no code, answered with none

Handler = Callable[[str | bytes], None]


class WebSocketClient(asyncio.Protocol):
    """One client connection; `connect()` makes one. States: connecting, open, closing, closed."""

    def __init__(self, handshake: ClientProtocol, max_size: int, close_timeout: float) -> None:
        self._handshake = handshake
        self._head = b""
        self._reader = FrameReader(max_size)
        self._close_timeout = close_timeout
        self.transport: asyncio.Transport | None = None
        self.state = "connecting"
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handler: Handler | None = None
        #: Messages that came before a handler was set, delivered to it when it is.
        self._early: list[str | bytes] = []
        self._failure: BaseException | None = None
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self._rcvd_then_sent = False
        #: The ReadBatch reading this connection in a load run, else None (the transport reads).
        self.read_batch = None
        #: While a read batch delivers bytes: when they arrived (monotonic seconds), else None.
        self.received_at: float | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None

    # --- sending ------------------------------------------------------------------------------

    def send_now(self, message: str | bytes) -> bool:
        """Write `message` as one frame at once; False if the connection is no longer open.

        The transport buffers what the socket does not take at once, as a real caller's line
        would carry on sending while the server is slow to read."""
        if self.state != "open":
            return False
        if isinstance(message, str):
            self.transport.write(client_frame(message.encode(), next_mask(), OP_TEXT))
        else:
            self.transport.write(client_frame(message, next_mask(), OP_BINARY))
        return True

    def frame_writer(self, text: bool) -> Callable[[bytes], bool]:
        """A writer of one kind of frame (text: UTF-8 bytes, or binary), for a message sent every
        20 ms: the lookups are done once, not per frame. It returns False once not open."""
        opcode, write, mask = (OP_TEXT if text else OP_BINARY), self.transport.write, next_mask

        def send(payload: bytes) -> bool:
            if self.state != "open":
                return False
            write(client_frame(payload, mask(), opcode))
            return True

        return send

    async def send(self, message: str | bytes) -> None:
        """`send_now`, then wait while the transport's buffer is over its high-water mark;
        ConnectionClosed once the connection is no longer open."""
        if not self.send_now(message):
            raise self._closed_exception()
        if self._writable is not None:
            await asyncio.shield(self._writable)

    # --- receiving ----------------------------------------------------------------------------

    async def serve(self, handler: Handler) -> None:
        """Hand each message to `handler` as it arrives until the connection closes; returns on
        a clean close, raises ConnectionClosedError otherwise (and whatever `handler` raised)."""
        self._handler = handler
        early, self._early = self._early, []
        for message in early:
            handler(message)
        await asyncio.shield(self._lost)
        if self._failure is not None:
            raise self._failure
        exc = self._closed_exception()
        if isinstance(exc, ConnectionClosedError):
            raise exc

    # --- closing ------------------------------------------------------------------------------

    def begin_close(self, code: int = _NORMAL, reason: str = "") -> None:
        """Start the closing handshake (nothing if it has started); the server has
        `close_timeout` seconds to answer and close TCP before the connection is dropped."""
        if self.state != "open":
            return
        self._send_close(Close(code, reason))

    async def close(self, code: int = _NORMAL, reason: str = "") -> None:
        """Close and wait until the connection is gone."""
        self.begin_close(code, reason)
        if self.state == "connecting" and self.transport is not None:
            self.transport.abort()
        await asyncio.shield(self._lost)

    def _send_close(self, close: Close) -> None:
        self.close_sent = close
        self.state = "closing"
        payload = b"" if close.code == _NO_STATUS else close.serialize()
        self.transport.write(client_frame(payload, next_mask(), OP_CLOSE))
        self._abort_timer = asyncio.get_running_loop().call_later(self._close_timeout, self.transport.abort)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455, 7.1.7): say why if still open, then drop it."""
        if self.state == "open":
            self.close_sent = Close(code, reason)
            self.transport.write(client_frame(self.close_sent.serialize(), next_mask(), OP_CLOSE))
        self.state = "closing"
        self.transport.close()

    def _closed_exception(self) -> Exception:
        rcvd, sent = self.close_rcvd, self.close_sent
        order = self._rcvd_then_sent if rcvd is not None and sent is not None else None
        if rcvd is not None and sent is not None and rcvd.code in OK_CLOSE_CODES and sent.code in OK_CLOSE_CODES:
            return ConnectionClosedOK(rcvd, sent, order)
        return ConnectionClosedError(rcvd, sent, order)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        for data in self._handshake.data_to_send():
            transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.state == "connecting":
            data = self._read_head(data)
            if not data:
                return
        if self.state != "open" and self.state != "closing":
            return
        try:
            events = self._reader.feed(data)
        except FrameError as exc:
            self._deliver(exc.before)
            self._fail(exc.code, exc.reason)
            return
        self._deliver(events)

    def _deliver(self, events: list) -> None:
        handler = self._handler
        for opcode, payload in events:
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if self.close_rcvd is not None:
                    continue  # nothing after the server's close frame counts (RFC 6455, 5.5.1)
                if handler is None:
                    self._early.append(payload)
                    continue
                try:
                    handler(payload)
                except Exception as exc:  # the handler's bug: end the connection, keep the error
                    self._failure = exc
                    self._fail(1011, "client error")
                    return
            elif opcode == OP_PING:
                if self.state == "open":
                    self.transport.write(client_frame(payload, next_mask(), OP_PONG))
            elif opcode == OP_CLOSE:
                self._on_close_frame(payload)
            # a pong answers no ping of ours: nothing to do

    def _on_close_frame(self, payload: bytes) -> None:
        try:
            self.close_rcvd = parse_close(payload)
            self._rcvd_then_sent = self.close_sent is None
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        if self.state == "open":
            # The server's close: echo its code (none if it gave none) and wait for it to
            # close TCP, as the client should (RFC 6455, 5.5.1, 7.1.1).
            self._send_close(Close(self.close_rcvd.code, ""))

    def _read_head(self, data: bytes) -> bytes:
        """Collect the handshake response; returns the bytes after it once it is accepted."""
        head = self._head + data
        end = head.find(_HEAD_END)
        if end < 0:
            if len(head) > _MAX_HEAD:
                self._refuse(InvalidHandshake("handshake response headers too long"))
            self._head = head
            return b""
        self._head = b""
        end += len(_HEAD_END)
        status = head[:end].split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status) < 2 or status[1] != b"101":
            reason = head[:end].split(b"\r\n", 1)[0].decode("latin-1")
            self._refuse(InvalidHandshake(f"server rejected WebSocket connection: {reason}"))
            return b""
        handshake = self._handshake
        handshake.receive_data(head[:end])
        handshake.events_received()
        if handshake.handshake_exc is not None:
            self._refuse(handshake.handshake_exc)
            return b""
        self.state = "open"
        if not self._opened.done():
            self._opened.set_result(None)
        return head[end:]

    def _refuse(self, exc: BaseException) -> None:
        self.state = "closed"
        if not self._opened.done():
            self._opened.set_exception(exc)
        self.transport.abort()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = "closed"
        if self.read_batch is not None:
            self.read_batch.remove(self)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if not self._opened.done():
            self._opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        self.resume_writing()
        if not self._lost.done():
            self._lost.set_result(None)


async def connect(
    url: str,
    headers: Mapping[str, str] | None = None,
    user_agent: str | None = None,
    open_timeout: float = 10.0,
    close_timeout: float = 5.0,
    max_size: int = 2**24,
) -> WebSocketClient:
    """Open a connection to `url` (ws:// or wss://); InvalidURI, InvalidHandshake, OSError or
    TimeoutError if it cannot be opened."""
    uri = parse_uri(url)
    handshake = ClientProtocol(uri, max_size=None)
    request = handshake.connect()
    if user_agent:
        request.headers["User-Agent"] = user_agent
    for name, value in (headers or {}).items():
        request.headers[name] = value
    handshake.send_request(request)
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context() if uri.secure else None
    async with asyncio.timeout(open_timeout):
        _, client = await loop.create_connection(
            lambda: WebSocketClient(handshake, max_size, close_timeout), uri.host, uri.port,
            ssl=context, server_hostname=uri.host if context else None,
        )
        try:
            await client._opened
        except BaseException:
            if client.transport is not None:
                client.transport.abort()
            raise
    return client
