"""The SQLite store's worker thread (`store/onethread.py`): calls run in order on one thread, results
and errors come back as futures, a call cancelled before it started is skipped, `stop` runs what
was handed in first."""

from __future__ import annotations

import asyncio
import threading

import pytest

from jobwire.store.onethread import OneThread


async def test_calls_run_in_order_on_one_thread_and_results_come_back() -> None:
    worker = OneThread("test-worker")
    worker.start()
    seen: list[tuple[int, str]] = []

    def call(i: int) -> int:
        seen.append((i, threading.current_thread().name))
        return i * 2

    results = await asyncio.gather(*(worker.submit(call, i) for i in range(50)))
    await worker.stop()
    assert results == [i * 2 for i in range(50)]
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"test-worker"}


async def test_an_error_is_raised_to_the_caller_and_the_thread_goes_on() -> None:
    worker = OneThread("test-worker")
    worker.start()

    def fail() -> None:
        raise ValueError("the store refused it")

    with pytest.raises(ValueError, match="refused"):
        await worker.submit(fail)
    assert await worker.submit(lambda: "still here") == "still here"
    await worker.stop()


async def test_a_call_cancelled_before_it_started_is_skipped() -> None:
    worker = OneThread("test-worker")
    worker.start()
    gate = threading.Event()
    ran: list[str] = []
    first = worker.submit(gate.wait, 5)  # holds the thread
    second = worker.submit(ran.append, "second")
    second.cancel()
    third = worker.submit(ran.append, "third")
    gate.set()
    assert await first is True
    await third
    await worker.stop()
    assert ran == ["third"]


async def test_stop_runs_what_was_handed_in_then_refuses_more() -> None:
    worker = OneThread("test-worker")
    worker.start()
    ran: list[int] = []
    pending = [worker.submit(ran.append, i) for i in range(20)]
    await worker.stop()
    assert ran == list(range(20))
    assert all(f.done() for f in pending)
    assert not worker.running
    with pytest.raises(RuntimeError, match="not running"):
        worker.submit(ran.append, 99)
    await worker.stop()  # a second stop does nothing
