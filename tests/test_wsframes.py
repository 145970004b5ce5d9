"""Frames written straight to a websockets client connection arrive as the messages sent, in
order with those sent through send(); nothing is written to a closed or backed-up connection."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from ivr.wsframes import OP_BINARY, OP_TEXT, WRITE_LIMIT, write_now


async def test_written_frames_arrive_in_order_with_sent_ones_then_nothing_once_closed():
    received: list = []
    done = asyncio.Event()

    async def handler(ws):
        async for message in ws:
            received.append(message)
            if message == "last":
                done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with connect(url, compression=None) as ws:
            audio = bytes(range(256)) * 2  # 512 bytes: the 16-bit length form
            assert write_now(ws, audio)
            await ws.send("between")
            assert write_now(ws, b"\xff" * 70000)  # the 64-bit length form
            assert write_now(ws, "é".encode(), OP_TEXT)
            assert write_now(ws, b"", OP_BINARY)
            await ws.send("last")
            await asyncio.wait_for(done.wait(), 5)
        assert not write_now(ws, b"after")
    assert received == [audio, "between", b"\xff" * 70000, "é", b"", "last"]


class _BackedUp:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return WRITE_LIMIT + 1

    def write(self, data: bytes) -> None:  # pragma: no cover - must not be called
        self.written.append(data)


async def test_a_backed_up_transport_is_left_to_send():
    from websockets.protocol import State

    class Conn:
        transport = _BackedUp()
        protocol = type("P", (), {"state": State.OPEN})()

    assert not write_now(Conn(), b"x")
    assert Conn.transport.written == []
