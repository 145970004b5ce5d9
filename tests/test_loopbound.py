"""ivr.loopbound: the Queue and Event a call waits on."""

import asyncio
from unittest import mock

import pytest

from ivr import loopbound


@pytest.mark.parametrize("uvloop_", [False, True])
def test_queue_and_event_behave_as_asyncio_and_wait_without_asking_the_loop_again(uvloop_):
    if uvloop_:
        uvloop = pytest.importorskip("uvloop")
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()

    async def main():
        queue: loopbound.Queue[int] = loopbound.Queue()
        event = loopbound.Event()

        async def producer():
            for i in range(3):
                await asyncio.sleep(0)
                queue.put_nowait(i)
            event.set()

        task = asyncio.create_task(producer())
        assert await event.wait() is True
        got = [queue.get_nowait() for _ in range(3)]
        await task
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.put_nowait(3)
        assert await waiter == 3
        loop = asyncio.get_running_loop()
        assert queue._loop is loop and event._loop is loop
        # Bound once: later waits do not look the running loop up again.
        with mock.patch("asyncio.mixins.events._get_running_loop", side_effect=AssertionError("looked up")):
            waiter = asyncio.create_task(queue.get())
            await asyncio.sleep(0)
            queue.put_nowait(7)
            assert await waiter == 7
            event.clear()
            loop.call_soon(event.set)
            assert await event.wait() is True
        return got

    with runner:
        assert runner.run(main()) == [0, 1, 2]

def test_a_queue_used_from_another_loop_still_fails():
    queue = loopbound.Queue()

    async def first():
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.put_nowait(1)
        return await waiter

    assert asyncio.run(first()) == 1

    async def second():
        return await asyncio.wait_for(queue.get(), 1)

    with pytest.raises(RuntimeError):
        asyncio.run(second())
