"""asyncio's Queue and Event, bound to their event loop once.

On Python 3.11 every wait on an asyncio.Queue or Event (and every asyncio.get_running_loop())
checks the running loop with a getpid() system call. A call waits on its queues 50 times a
second or more; with hundreds of calls those system calls were 5-7 % of the server's CPU, more
where system calls are dear (gVisor, seccomp). Python 3.12 keeps the running loop in the thread
state instead. These bind to the loop on first use, as asyncio's own do, and skip the check
after (using one from another loop still fails, when the task awaits the other loop's future).
What a call waits on uses these; objects of the whole server, waited on rarely, keep asyncio's.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class _BoundOnce:
    _loop: asyncio.AbstractEventLoop | None

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or super()._get_loop()  # type: ignore[misc]


class Queue(_BoundOnce, asyncio.Queue, Generic[T]):
    pass


class Event(_BoundOnce, asyncio.Event):
    pass


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """`event.wait()` for at most `timeout` seconds: True if it was set. The same as under
    `asyncio.timeout()`, which asks for the running loop and the current task (a getpid() each)
    every time; here the event's own loop answers, once it is bound."""
    loop = event._loop or asyncio.get_running_loop()  # type: ignore[attr-defined]
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("wait_event() must run in a task")
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_at(loop.time() + timeout, expire)
    try:
        await event.wait()
        return True
    except asyncio.CancelledError:
        # Ours only if the timer fired and no one else cancelled the task meanwhile.
        if expired and task.uncancel() <= cancelling:
            return event.is_set()
        raise
    finally:
        timer.cancel()
