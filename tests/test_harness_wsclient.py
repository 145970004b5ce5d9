"""The harness's own WebSocket client: RFC 6455 framing on bytes, and the connection against a
server that writes its frames by hand (split, fragmented, pings, closes) and one that is
websockets' own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import pytest
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedError, InvalidHandshake

from ivr.harness.wsclient import connect
from ivr.harness.wsframe import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameError, FrameReader
from ivr.wsframes import client_frame, mask_source

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """A frame as a server writes it (unmasked unless `mask`), any length encoding."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def read_client_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(opcode, fin, payload) of each client frame in `data`; every one must be masked."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b1 & 0x80, "a client frame must be masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = struct.unpack_from("!H", data, pos)[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack_from("!Q", data, pos)[0], pos + 8
        mask, pos = data[pos : pos + 4], pos + 4
        out.append((b0 & 0x0F, bool(b0 & 0x80), bytes(b ^ mask[i % 4] for i, b in enumerate(data[pos : pos + n]))))
        pos += n
    return out


# --- framing, sans I/O --------------------------------------------------------------------------


def test_client_frames_are_masked_and_unmask_to_the_payload():
    next_mask = mask_source()
    for size in (0, 125, 126, 300, 65535, 65536):
        payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        frame = client_frame(payload, next_mask(), OP_BINARY)
        [(opcode, fin, got)] = read_client_frames(frame)
        assert (opcode, fin, got) == (OP_BINARY, True, payload)
    assert next_mask() != next_mask()
    # Keys keep coming, fresh, past each batch drawn from the OS.
    keys = [next_mask() for _ in range(3000)]
    assert all(len(k) == 4 for k in keys) and len(set(keys)) > 2900


def test_a_frame_split_at_every_byte_is_read_whole_once():
    message = '{"event":"media","media":{"payload":"' + "A" * 300 + '"}}'
    wire = server_frame(message.encode()) + server_frame(b"x" * 70000, OP_BINARY)
    for cut in range(0, len(wire), 97):
        for split in (1, 2, 3, 9, 11):
            reader = FrameReader()
            got = reader.feed(wire[:cut])
            got += reader.feed(wire[cut : cut + split])
            got += reader.feed(wire[cut + split :])
            assert got == [(OP_TEXT, message), (OP_BINARY, b"x" * 70000)]


def test_several_frames_in_one_read_come_out_in_order():
    reader = FrameReader()
    wire = b"".join(server_frame(f"m{i}".encode()) for i in range(5)) + server_frame(b"p", OP_PING)
    assert reader.feed(wire) == [(OP_TEXT, f"m{i}") for i in range(5)] + [(OP_PING, b"p")]


def test_a_fragmented_message_is_joined_with_a_ping_between_its_fragments():
    reader = FrameReader()
    wire = (server_frame("héllo ".encode()[:2], OP_TEXT, fin=False)
            + server_frame(b"hi", OP_PING)
            + server_frame("héllo ".encode()[2:], 0, fin=False)
            + server_frame(b"world", 0, fin=True))
    # The ping comes out when it arrives; the message when its last fragment does. The split
    # falls inside the two bytes of 'é': UTF-8 is checked on the whole message only.
    assert reader.feed(wire) == [(OP_PING, b"hi"), (OP_TEXT, "héllo world")]


@pytest.mark.parametrize("wire, code", [
    (server_frame(b"x", mask=b"\x01\x02\x03\x04"), 1002),  # servers never mask
    (server_frame(b"x", rsv=0x40), 1002),  # no extension negotiated
    (server_frame(b"x", opcode=0x3), 1002),  # reserved data opcode
    (server_frame(b"x", opcode=0xB), 1002),  # reserved control opcode
    (server_frame(b"x", opcode=0), 1002),  # a continuation of nothing
    (server_frame(b"a", fin=False) + server_frame(b"b"), 1002),  # a new message inside one
    (server_frame(b"p" * 126, OP_PING), 1002),  # control frames are short
    (server_frame(b"p", OP_PING, fin=False), 1002),  # and whole
    (server_frame(b"\xff\xfe"), 1007),  # text that is not UTF-8
    (server_frame(b"x" * 2000), 1009),  # over the size limit
    (server_frame(b"x" * 600, fin=False) + server_frame(b"x" * 600, 0), 1009),  # the same in fragments
])
def test_a_frame_that_breaks_the_rules_fails_with_its_close_code(wire, code):
    reader = FrameReader(max_size=1000)
    with pytest.raises(FrameError) as caught:
        reader.feed(wire)
    assert caught.value.code == code


def test_messages_before_a_bad_frame_are_kept():
    reader = FrameReader()
    with pytest.raises(FrameError) as caught:
        reader.feed(server_frame(b"good") + server_frame(b"bad", mask=b"abcd"))
    assert caught.value.before == [(OP_TEXT, "good")]


# --- the connection -----------------------------------------------------------------------------


class HandServer:
    """A WebSocket server written by hand: accepts the upgrade, then runs `script(reader,
    writer)`, which writes frames as bytes; what the client sends is kept in `received`."""

    def __init__(self, script, status: bytes = b"101 Switching Protocols") -> None:
        self.script = script
        self.status = status
        self.received: list[tuple[int, bool, bytes]] = []
        self.request = b""
        self.done = asyncio.Event()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/media"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.request = await reader.readuntil(b"\r\n\r\n")
            if not self.status.startswith(b"101"):
                writer.write(b"HTTP/1.1 " + self.status + b"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            key = next(line.split(b":", 1)[1].strip() for line in self.request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            await self.script(head, reader, writer, self)
        finally:
            writer.close()
            self.done.set()

    async def read_frame(self, reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        extra = {126: 2, 127: 8}.get(n, 0)
        rest = await reader.readexactly(extra + 4)
        if extra:
            n = int.from_bytes(rest[:extra], "big")
        frame = read_client_frames(bytes((b0, b1)) + rest + await reader.readexactly(n))[0]
        self.received.append(frame)
        return frame


async def test_frames_in_the_handshakes_read_then_split_fragmented_and_pinged():
    async def script(head, reader, writer, server):
        # The first message rides in the same write as the 101; the next is split across
        # writes, fragmented, with a ping between its fragments.
        writer.write(head + server_frame(b'{"n":1}'))
        await writer.drain()
        wire = server_frame(b'{"n":', fin=False) + server_frame(b"ping!", OP_PING) + server_frame(b"2}", 0)
        for i in range(0, len(wire), 3):
            writer.write(wire[i : i + 3])
            await writer.drain()
            await asyncio.sleep(0)
        assert await server.read_frame(reader) == (OP_PONG, True, b"ping!")
        assert await server.read_frame(reader) == (OP_TEXT, True, b"hello")
        writer.write(server_frame(struct.pack("!H", 1000) + b"bye", OP_CLOSE))
        await writer.drain()
        assert await server.read_frame(reader) == (OP_CLOSE, True, struct.pack("!H", 1000))
        writer.close()  # the server closes TCP after the closing handshake

    async with HandServer(script) as server:
        client = await connect(server.url, headers={"X-Test": "yes"}, user_agent="tester")
        got = []

        def handler(message):
            got.append(message)
            if len(got) == 2:
                assert client.send_now("hello")

        await asyncio.wait_for(client.serve(handler), 5)  # a clean close: no exception
    assert got == ['{"n":1}', '{"n":2}']
    assert b"X-Test: yes" in server.request and b"User-Agent: tester" in server.request
    assert not client.send_now("late")  # closed


async def test_client_close_waits_for_the_servers_close_and_tcp_end():
    async def script(head, reader, writer, server):
        writer.write(head)
        await writer.drain()
        assert await server.read_frame(reader) == (OP_TEXT, True, b"stop")
        opcode, _, payload = await server.read_frame(reader)
        assert (opcode, payload) == (OP_CLOSE, struct.pack("!H", 1000))
        writer.write(server_frame(payload, OP_CLOSE))
        await writer.drain()

    async with HandServer(script) as server:
        client = await connect(server.url)
        serving = asyncio.create_task(client.serve(lambda m: None))
        await client.send("stop")
        await asyncio.wait_for(client.close(), 5)
        await asyncio.wait_for(serving, 5)  # clean
        assert client.close_rcvd.code == 1000


async def test_tcp_dropped_without_a_close_frame_is_an_abnormal_close():
    async def script(head, reader, writer, server):
        writer.write(head + server_frame(b"one"))
        await writer.drain()

    async with HandServer(script) as server:
        client = await connect(server.url)
        got = []
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(client.serve(got.append), 5)
        assert got == ["one"]


async def test_a_masked_server_frame_fails_the_connection_with_1002():
    async def script(head, reader, writer, server):
        writer.write(head + server_frame(b"ok") + server_frame(b"no", mask=b"abcd"))
        await writer.drain()
        await server.read_frame(reader)

    async with HandServer(script) as server:
        client = await connect(server.url)
        got = []
        with pytest.raises(ConnectionClosedError) as caught:
            await asyncio.wait_for(client.serve(got.append), 5)
        await asyncio.wait_for(server.done.wait(), 5)
    assert got == ["ok"]
    assert caught.value.sent.code == 1002
    assert server.received[0][0] == OP_CLOSE and server.received[0][2][:2] == struct.pack("!H", 1002)


async def test_a_refused_upgrade_is_an_invalid_handshake():
    async def script(head, reader, writer, server):  # pragma: no cover - never reached
        pass

    async with HandServer(script, status=b"403 Forbidden") as server:
        with pytest.raises(InvalidHandshake, match="403"):
            await connect(server.url, open_timeout=5)


async def test_against_websockets_server_both_closing_directions():
    async def handler(ws):
        async for message in ws:
            if message == "close please":
                await ws.close(1000)
                return
            await ws.send(message.upper() if isinstance(message, str) else message[::-1])

    async with ws_serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = await connect(url)
        got = []
        serving = asyncio.create_task(client.serve(got.append))
        await client.send("abc")
        await client.send(b"\x01\x02\x03")
        await client.send("x" * 70000)
        await client.send("close please")  # the server closes: echoed, clean
        await asyncio.wait_for(serving, 5)
        assert got == ["ABC", b"\x03\x02\x01", "X" * 70000]
        assert client.close_rcvd.code == 1000 and client.close_sent.code == 1000
