"""One worker thread that runs calls in the order they are handed in, each result handed back to
the event loop as an asyncio future: the SQLite store's thread (`store/sqlite.py`).

What `loop.run_in_executor` on a one-worker `ThreadPoolExecutor` does, with less in between. That
path runs dozens of Python-level calls a call on both threads, each needing the GIL: the
executor's locks and work item, `asyncio.wrap_future`'s chaining of two futures, the concurrent
future's condition. Here a call is a `SimpleQueue` put and get (C; the GIL is released while the
thread waits) and one `call_soon_threadsafe` back: one Python-level call on each side. Measured
(docs/performance.md, "Session 20"): a no-op's round trip on uvloop, both threads on one CPU, 29–38
µs of CPU through the executor and 11–17 µs here; at one producer (a commit per run) the loop's
thread makes 275 Python-level calls a run instead of 318.

As with an executor, a call whose future was cancelled before the thread took it is skipped; a
call already running completes (its result is dropped).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _resolve(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _reject(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class OneThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on the thread after everything handed in before it."""
        if self._thread is None:
            raise RuntimeError(f"{self.name} is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, fn, args))
        return fut

    async def stop(self) -> None:
        """Run what was handed in, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        last = self.submit(_nothing)
        self._thread = None
        self._queue.put(None)
        await last
        thread.join()  # it has passed its last call: only the sentinel is left

    def _work(self) -> None:
        get = self._queue.get
        while (item := get()) is not None:
            loop, fut, fn, args = item
            if fut.cancelled():  # its caller gave up before it started
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, as an executor does
                _hand_back(loop, _reject, fut, exc)
            else:
                _hand_back(loop, _resolve, fut, result)


def _nothing() -> None:
    return None


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    how: Callable[[asyncio.Future[Any], Any], None],
    fut: asyncio.Future[Any],
    value: Any,
) -> None:
    try:
        loop.call_soon_threadsafe(how, fut, value)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass
