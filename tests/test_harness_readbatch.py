"""A load run's read batch: the bot's messages wait in the socket until the frame pacer's pass
reads them, each with the time the kernel received it; the closing handshake and the end of
the stream go back to the transport. Against websockets' own server, on asyncio's loop and on
uvloop (whose paused transports are why the batch has an epoll set of its own)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedError

from ivr.harness.readbatch import ReadBatch
from ivr.harness.wsclient import connect

pytestmark = pytest.mark.skipif(not ReadBatch.supported(), reason="read batches need Linux (epoll)")


def run_on(loop_name: str, main):
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(main())
    return asyncio.run(main())


LOOPS = ["asyncio", "uvloop"]


class Server:
    """websockets' server; the test says what it sends (`say`), or closes (`close`, `drop`)."""

    def __init__(self) -> None:
        self.commands: asyncio.Queue = asyncio.Queue()
        self.heard: list[str | bytes] = []
        self.sent_at: list[float] = []

    async def handler(self, ws) -> None:
        async def listen():
            async for message in ws:
                self.heard.append(message)

        listening = asyncio.create_task(listen())
        while True:
            kind, value = await self.commands.get()
            if kind == "say":
                self.sent_at.append(time.monotonic())
                await ws.send(value)
            elif kind == "close":
                await ws.close(1000)
                break
            elif kind == "drop":
                ws.transport.abort()
                break
        await asyncio.gather(listening, return_exceptions=True)

    async def __aenter__(self):
        self._serving = ws_serve(self.handler, "127.0.0.1", 0)
        server = await self._serving.__aenter__()
        self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/media"
        return self

    async def __aexit__(self, *exc):
        await self._serving.__aexit__(*exc)


async def until(predicate, timeout: float = 5.0, every: float = 0.005, tick=None) -> None:
    """Wait for `predicate()`, calling `tick()` (the pacer's pass) every `every` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        if tick is not None:
            tick()
        await asyncio.sleep(every)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_messages_wait_until_the_pass_and_keep_the_time_they_arrived(loop_name):
    async def main():
        batch = ReadBatch()
        async with Server() as server:
            client = await connect(server.url)
            got = []
            serving = asyncio.create_task(client.serve(lambda m: got.append((m, client.received_at))))
            assert batch.add(client) and len(batch) == 1 and client.read_batch is batch
            # The kernel turns its receive times on a moment after the first socket asks (a
            # deferred work item): until then a message has none and counts from its read.
            while not any(at is not None for _, at in got):
                await server.commands.put(("say", "warm-up"))
                n = len(got) + 1
                await until(lambda: len(got) == n, tick=batch.read_ready)
            assert {m for m, _ in got} == {"warm-up"}
            got.clear()
            sent_before = len(server.sent_at)
            await server.commands.put(("say", "one"))
            await server.commands.put(("say", "two"))
            await until(lambda: len(server.sent_at) == 2 + sent_before)
            await asyncio.sleep(0.08)  # the loop runs; nothing reads the socket meanwhile
            unread = list(got)
            read_at = time.monotonic()
            batch.read_ready()
            # Back to the transport: read as it arrives again, with no batch time.
            batch.remove(client)
            assert client.read_batch is None and len(batch) == 0
            gc.collect()  # the batch's socket object is gone: it must not have closed the fd
            await server.commands.put(("say", "three"))
            await until(lambda: len(got) == 3)
            assert client.send_now("still open")
            await until(lambda: server.heard == ["still open"])
            await server.commands.put(("close", None))
            await asyncio.wait_for(serving, 5)
            return unread, got, server.sent_at[sent_before:], read_at

    unread, got, sent_at, read_at = run_on(loop_name, main)
    assert unread == []
    assert [m for m, _ in got] == ["one", "two", "three"]
    for (_, at), sent in zip(got[:2], sent_at):
        # The kernel's arrival time: at its sending (a loopback packet arrives as it is written),
        # not at the read 80 ms later.
        assert at is not None and sent - 0.002 <= at <= sent + 0.03 and at < read_at - 0.04
    assert got[2][1] is None


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("end", ["close", "drop"])
def test_the_end_of_a_batched_connection_goes_back_to_its_transport(loop_name, end):
    """The server's close frame, or TCP dropped with none: read in a pass, then handed to the
    transport, which ends the connection as it would have (cleanly, or abnormally). A closed
    connection is not taken again."""

    async def main():
        batch = ReadBatch()
        async with Server() as server:
            client = await connect(server.url)
            got = []
            serving = asyncio.create_task(client.serve(got.append))
            assert batch.add(client)
            await server.commands.put(("say", "last words"))
            await server.commands.put((end, None))
            # The pacer's passes: the message, then the end, then the transport's turn.
            await until(lambda: serving.done(), tick=batch.read_ready)
            return got, client, serving, batch, batch.add(client)

    got, client, serving, batch, taken_again = run_on(loop_name, main)
    assert got == ["last words"]
    assert client.state == "closed" and client.read_batch is None and len(batch) == 0
    assert not taken_again  # a connection no longer open is left to its transport
    if end == "close":
        serving.result()  # a clean close raises nothing
        assert client.close_rcvd.code == 1000
    else:
        with pytest.raises(ConnectionClosedError):
            serving.result()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_one_connection_is_read_before_the_pass_when_asked(loop_name):
    """What a mark echo due in a pass must see first: its own call's unread messages (a clear),
    read on their own, with their kernel times; the other calls' wait for the pass."""

    async def main():
        batch = ReadBatch()
        async with Server() as server_a, Server() as server_b:
            a, b = await connect(server_a.url), await connect(server_b.url)
            got = {"a": [], "b": []}
            tasks = [asyncio.create_task(c.serve(lambda m, k=k, c=c: got[k].append((m, c.received_at))))
                     for k, c in (("a", a), ("b", b))]
            assert batch.add(a) and batch.add(b)
            await server_a.commands.put(("say", "clear"))
            await server_b.commands.put(("say", "media"))
            await until(lambda: server_a.sent_at and server_b.sent_at)
            await asyncio.sleep(0.05)
            batch.read_now(a)
            after_read_now = {k: list(v) for k, v in got.items()}
            batch.read_ready()
            after_pass = {k: list(v) for k, v in got.items()}
            for c, server in ((a, server_a), (b, server_b)):
                batch.remove(c)
                await server.commands.put(("close", None))
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            return after_read_now, after_pass

    after_read_now, after_pass = run_on(loop_name, main)
    assert [m for m, _ in after_read_now["a"]] == ["clear"] and after_read_now["b"] == []
    assert [m for m, _ in after_pass["b"]] == ["media"] and len(after_pass["a"]) == 1
