"""The store's None adapter (`store/sqlite.py`): None still binds as SQL NULL, through the adapter."""

from __future__ import annotations

import sqlite3

import jobwire.store.sqlite  # noqa: F401 - registers the adapter


def test_none_has_an_adapter_found_in_one_lookup() -> None:
    # without one, CPython 3.11 looks for __adapt__ / __conform__ per None bound (an AttributeError each)
    adapter = sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol))
    assert adapter is not None
    assert adapter(None) is None


def test_none_is_still_stored_as_null() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a, b)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(None, 1), (None, None)])
    conn.execute("INSERT INTO t VALUES (:a, :b)", {"a": None, "b": "x"})
    rows = conn.execute("SELECT typeof(a), a IS NULL, b FROM t").fetchall()
    assert rows == [("null", 1, 1), ("null", 1, None), ("null", 1, "x")]
    assert conn.execute("SELECT count(*) FROM t WHERE a = ?", (None,)).fetchone() == (0,)  # NULL = NULL
