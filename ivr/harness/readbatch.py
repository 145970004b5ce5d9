"""The bot's messages of many calls read together, when the load generator's frame pacer wakes.

Why: on a virtual machine a sleeping process pays for each wake-up in CPU time: 27-70 us a time
for a bare `time.sleep` loop on the 2-core machine the capacity figures come from. Under
`ivr load` the bot's messages woke the generator more often than its own frame ticks did: about
540 of its 650 wake-ups a second at 100 calls. A load run reads them instead when the pacer
next wakes to send frames (within a frame, 20 ms, and within 4 ms once calls are spread over
the start grid). Each message keeps its exact arrival time, which the kernel records
(SO_TIMESTAMPNS), so the playout model and the figures built on it do not move; only what the
emulator does in answer (a mark echo due at once, a plan step waiting on the bot) waits for that
pass. `ivr replay` and `ivr test` read each message as it arrives.

Written by hand because the event loop cannot do it: a paused uvloop (libuv) transport stays in
the loop's own epoll set until its socket next becomes readable, so pausing and resuming
transports around the ticks still woke the loop for every message. Here the sockets sit in an
epoll set of their own that is only ever polled without waiting. A connection is read here only
while it is open and its call is sending frames; its transport reads the closing handshake and
the end of the stream as usual.
"""

from __future__ import annotations

import select
import socket
import struct
import time

#: At most this much of one call's socket is read per pass; the rest is read at the next.
READ_SIZE = 1 << 18
#: Linux's values (asm-generic/socket.h), for Pythons whose socket module does not name them.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
#: struct timespec: a C long of seconds, then one of nanoseconds.
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


class ReadBatch:
    """Plain-TCP WebSocket client connections (`wsclient.WebSocketClient`) read by `read_ready()`."""

    @staticmethod
    def supported() -> bool:
        """Whether this system can batch reads (Linux: epoll, and the kernel's receive times)."""
        return hasattr(select, "epoll") and hasattr(socket.socket, "recvmsg")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        #: fd -> (client, a socket object over that fd, never closing it: see `_forget`).
        self._clients: dict[int, tuple[object, socket.socket]] = {}
        #: client -> its fd: a call's own reads and removal find it without a scan.
        self._fd_of: dict[object, int] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def add(self, client) -> bool:
        """Read `client` here from now on; False, with nothing changed, if it cannot be: not
        open, or over TLS (its bytes must go through the transport to be decrypted)."""
        transport = client.transport
        if client.state != "open" or transport is None or transport.is_closing():
            return False
        if transport.get_extra_info("sslcontext") is not None:
            return False
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        fd = raw.fileno()
        old = self._clients.get(fd)
        if old is not None:  # the fd of a connection closed without remove(): not ours now
            self._forget(fd, old)
        sock = socket.socket(fileno=fd)
        sock.settimeout(0.0)  # never wait: recvmsg raises BlockingIOError when nothing is there
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        transport.pause_reading()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._clients[fd] = (client, sock)
        self._fd_of[client] = fd
        client.read_batch = self
        return True

    def remove(self, client) -> None:
        """Give `client`'s reading back to its transport (nothing if it is not read here)."""
        if client.read_batch is not self:
            return
        client.read_batch = None
        fd = self._fd_of.get(client)
        if fd is not None:
            self._forget(fd, self._clients[fd])
        transport = client.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _forget(self, fd: int, entry: tuple[object, socket.socket]) -> None:
        del self._clients[fd]
        self._fd_of.pop(entry[0], None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # the transport closed it already: the kernel dropped it from the set
        entry[1].detach()  # the transport owns the fd: this object must never close it
        if entry[0].read_batch is self:
            entry[0].read_batch = None

    def read_ready(self) -> None:
        """Read every socket with bytes waiting, without blocking, into its client, with the
        time they arrived (`client.received_at`, monotonic seconds)."""
        if not self._clients:
            return
        ready = self._epoll.poll(0)
        if not ready:
            return
        clients = self._clients
        # The kernel stamps arrivals on the real-time clock; the harness runs on the monotonic.
        offset = time.time() - time.monotonic()
        for fd, _ in ready:
            entry = clients.get(fd)
            if entry is not None:
                self._read(entry, offset)

    def read_now(self, client) -> None:
        """Read what has come for `client` alone, before the pass's own reading: what the
        emulator is about to do on the call clock must first see what the bot sent before it."""
        fd = self._fd_of.get(client)
        if fd is not None:
            self._read(self._clients[fd], time.time() - time.monotonic())

    def _read(self, entry: tuple, offset: float) -> None:
        client, sock = entry
        if client.state != "open":
            self.remove(client)  # closing: the transport reads the rest
            return
        try:
            data, ancillary, _, _ = sock.recvmsg(READ_SIZE, _ANCILLARY_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.remove(client)  # the end of the stream, or an error: the transport reports it
            return
        # No time until the kernel has turned its receive times on: when the first socket
        # asks, it does so a moment later (a deferred work item). Such a message counts from
        # its read, as it would unbatched.
        at = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                at = seconds + nanoseconds * 1e-9 - offset
        client.received_at = at
        try:
            client.data_received(data)
        finally:
            client.received_at = None
