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


def test_wait_event_times_out_is_set_and_passes_other_cancellations_on():
    async def main():
        loop = asyncio.get_running_loop()
        event = loopbound.Event()
        t0 = loop.time()
        assert await loopbound.wait_event(event, 0.05) is False
        assert loop.time() - t0 >= 0.045
        loop.call_later(0.01, event.set)
        assert await loopbound.wait_event(event, 5) is True
        event.clear()

        # Someone else's cancellation is theirs, not a timeout.
        waiter = asyncio.create_task(loopbound.wait_event(event, 5))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

        # Cancelled by someone else in the same moment as the timer fires: still cancelled.
        waiter = asyncio.create_task(loopbound.wait_event(event, 0.02))
        loop.call_later(0.02, waiter.cancel)
        with pytest.raises(asyncio.CancelledError):
            await waiter

        # Set in the same moment as the timer fires: set wins.
        loop.call_later(0.03, event.set)
        assert await loopbound.wait_event(event, 0.03) is True

        # No cancellation is left behind on the waiting task.
        assert asyncio.current_task().cancelling() == 0

        # A stdlib Event, not yet bound to a loop, works the same.
        plain = asyncio.Event()
        assert await loopbound.wait_event(plain, 0.01) is False
        loop.call_soon(plain.set)
        assert await loopbound.wait_event(plain, 1) is True

    asyncio.run(main())
