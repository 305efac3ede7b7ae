"""The client's request slots, with what ends runs served before what starts them.

`Kube` keeps at most MAX_REQUESTS requests in flight. With 10,000 runs triggered at once the
event loop is saturated for the whole burst and requests wait here for a slot; a FIFO semaphore
made the request a finished run still needs (its pod's log) queue behind every creation that
asked earlier, and the run's final status waited with it (a log copy took 0.6 s at the median,
3.5 s at p99, while Jobs were still being created). Here a freed slot goes to a waiting request
of the most urgent class first; creations, the least urgent, wait while anything else does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

URGENT = 0
"""What ends or follows runs: pod logs and lists, deletes, events, gets, the watches' lists."""
START = 1
"""Job creations."""


class Slots:
    """`n` slots; `take(cls)` waits for one. Within a class, first come first served; a freed
    slot goes to the oldest waiter of the most urgent class that has one."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    @property
    def free(self) -> int:
        return self._free

    def waiting(self, cls: int) -> int:
        return sum(not f.done() for f in self._waiting[cls])

    @contextlib.asynccontextmanager
    async def take(self, cls: int) -> AsyncIterator[None]:
        await self._acquire(cls)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, cls: int) -> None:
        if self._free > 0:  # then nobody waits: a release hands its slot to a waiter if there is one
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[cls].append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            raise

    def _release(self) -> None:
        for queue in self._waiting:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self._free += 1
