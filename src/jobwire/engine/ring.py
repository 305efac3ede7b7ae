"""A bounded ring of recent items, each numbered by a sequence number, read by any number of
readers at their own cursors.

Appending is O(1) whatever the number of readers: the item is stored once and the readers that
wait are woken by one shared future, at most once per `wake_interval` (appends in between are
read together on the next wake-up). A reader whose cursor fell behind the oldest item kept is
told which sequence numbers it missed and resumes from the oldest kept.

Sequence numbers start at `base` and grow by one per `append` or `skip`. The items kept are
always the contiguous range `first..last`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers `first..last` (inclusive) were dropped before the reader got them."""

    first: int
    last: int

    @property
    def missed(self) -> int:
        return self.last - self.first + 1


class Ring(Generic[T]):
    def __init__(self, capacity: int, base: int = 1, wake_interval: float = 0.0) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1")
        self.capacity = capacity
        self.base = base
        self.wake_interval = wake_interval
        self._buf: list[T | None] = [None] * capacity
        self.first = base
        """Oldest sequence number kept (== last + 1 when none is kept)."""
        self.last = base - 1
        """Newest sequence number handed out (base - 1 before the first)."""
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._wake: asyncio.Handle | None = None
        self._last_wake = -float("inf")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def append(self, item: T) -> int:
        self.last += 1
        self._buf[self.last % self.capacity] = item
        if self.last - self.first >= self.capacity:
            self.first = self.last - self.capacity + 1
        self._notify()
        return self.last

    def skip(self) -> int:
        """Hand out a sequence number without an item (nobody was listening): readers behind it
        see a gap instead of silently missing it. Everything kept before it is dropped, so the
        kept range stays contiguous."""
        if self.last >= self.first:  # something kept (`len(self)`, without the call)
            self._buf = [None] * self.capacity
        self.last += 1
        self.first = self.last + 1
        return self.last

    def read(self, after: int, limit: int) -> tuple[Gap | None, list[T], int]:
        """Items after sequence number `after` (at most `limit`): (gap, items, new cursor). The gap
        is what was dropped between `after` and the oldest kept. `after` must be ≤ `last`."""
        start = after + 1
        gap = None
        if start < self.first:
            gap = Gap(start, self.first - 1)
            start = self.first
        end = min(self.last, start + limit - 1)
        cap = self.capacity
        items = [self._buf[s % cap] for s in range(start, end + 1)]
        return gap, items, end  # type: ignore[return-value]

    def knows(self, seq: int) -> bool:
        """Whether `seq` was handed out by this ring (a reader may resume after it)."""
        return self.base - 1 <= seq <= self.last

    async def wait(self, after: int, timeout: float | None) -> bool:  # noqa: ASYNC109 - a heartbeat, not a deadline
        """Wait until something follows `after` or the ring is closed: True, or False on timeout."""
        if self.last > after or self.closed:
            return True
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        done, _ = await asyncio.wait({self._waiter}, timeout=timeout)
        return bool(done)

    def close(self) -> None:
        """Wake every reader for good (the hub is stopping)."""
        self.closed = True
        self._wake_now()

    def _notify(self) -> None:
        if self._waiter is None or self._wake is not None:
            return
        loop = self._waiter.get_loop()
        delay = self._last_wake + self.wake_interval - loop.time()
        self._wake = loop.call_later(delay, self._wake_now) if delay > 0 else loop.call_soon(self._wake_now)

    def _wake_now(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._last_wake = waiter.get_loop().time()
            if not waiter.done():
                waiter.set_result(None)
