"""A small group commit holds the event loop while the store thread runs its statements
(`SQLiteStore._w_held`): never unbounded, and never behind other work on the store thread.
Each test awaits `_w_held` directly, so it runs before the callbacks scheduled just before it (a
`wait_for` would start it in a task of its own, after them). Nothing here can hang: the store
thread gives up on a wait after 5 s, which fails the test."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from jobwire.store import sqlite as sqlite_store
from jobwire.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(f"sqlite:///{tmp_path}/jobwire.db")
    await s.open()
    yield s
    await s.close()


def _trivial(order: list[str]) -> Callable[[sqlite3.Connection], str]:
    def op(conn: sqlite3.Connection) -> str:
        conn.execute("SELECT 1").fetchone()
        order.append("statements")
        return "done"

    return op


async def test_the_loop_waits_for_a_small_commits_statements(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "HOLD_MAX", 10.0)  # a slow CI machine must not decide it
    order: list[str] = []
    asyncio.get_running_loop().call_soon(order.append, "loop")
    assert await store._w_held(sqlite_store.HOLD_ITEMS[0], _trivial(order)) == "done"
    assert order == ["statements", "loop"]


@pytest.mark.parametrize("size", [1, sqlite_store.HOLD_ITEMS[0] - 1, sqlite_store.HOLD_ITEMS[1] + 1])
async def test_a_big_or_a_tiny_commit_is_not_held(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Outside HOLD_ITEMS the loop goes on at once: the callback runs before the statements end."""
    monkeypatch.setattr(sqlite_store, "HOLD_MAX", 10.0)
    ran = threading.Event()

    def op(conn: sqlite3.Connection) -> None:
        assert ran.wait(5), "the loop was held"

    asyncio.get_running_loop().call_soon(ran.set)
    await store._w_held(size, op)


async def test_the_hold_ends_after_hold_max_when_the_statements_take_longer(store: SQLiteStore) -> None:
    """Statements that only the loop can let finish: the loop must come back by itself (a hold
    without its bound would deadlock here, and `op` would give up after 5 s)."""
    ran = threading.Event()

    def op(conn: sqlite3.Connection) -> None:
        assert ran.wait(5), "the loop was held past HOLD_MAX"

    asyncio.get_running_loop().call_soon(ran.set)
    await store._w_held(sqlite_store.HOLD_ITEMS[0], op)


async def test_no_hold_while_other_work_is_on_the_store_thread(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read still running on the store thread (a dashboard page): the commit waits behind it,
    and the loop must not wait with it."""
    monkeypatch.setattr(sqlite_store, "HOLD_MAX", 10.0)
    release = threading.Event()

    def slow_read(conn: sqlite3.Connection) -> None:
        assert release.wait(5), "the loop was held behind a read"

    read = store._submit(store._read, slow_read)  # handed to the store thread now, as `_r` does
    asyncio.get_running_loop().call_soon(release.set)
    await store._w_held(sqlite_store.HOLD_ITEMS[0], _trivial([]))
    await read
