"""A target's places for calls in flight: `asyncio.Semaphore`'s rules, with a call-free way in.

Why: the http target takes a place for every call (`in_flight`). `async with semaphore` is seven
Python-level calls a run in the standard library (`__aenter__`, `acquire`, `locked` and its
generator, `__aexit__`, `release`, `_wake_up_next`), ~3 µs of the ~270 µs of CPU a finished HTTP
run costs the event loop. Here a caller that finds a place free takes it with `take()` (one call)
and awaits only when none is (`wait()`).

The rules are the semaphore's: first come, first served — a place given back goes to the longest
waiter, handed over directly (no newcomer can take it in between), and `take()` refuses while
anyone waits; a waiter cancelled after a place was handed to it passes the place on.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Places"]


class Places:
    __slots__ = ("_waiters", "free")

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"places must be 0 or more, not {count}")
        self.free = count
        """Places nobody holds (and none waits for: a freed place goes to a waiter first)."""
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """Whether a caller would have to wait (`take()` would refuse)."""
        return self.free == 0 or bool(self._waiters)

    def take(self) -> bool:
        """A place now, if one is free and nobody waits for one; else False (then `wait()`)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """A place, after those who waited before (it is handed over by `release`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a place, then cancelled before using it: passed on
            elif fut in self._waiters:  # `release` may have dropped it already, as cancelled
                self._waiters.remove(fut)
            raise

    async def acquire(self) -> None:
        if not self.take():
            await self.wait()

    def release(self) -> None:
        """Give a place back: to the longest waiter if any, else to `free`."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
