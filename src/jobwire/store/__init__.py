"""Stores: where definitions, events and runs live. `open_store(url)` picks one by URL scheme."""

from __future__ import annotations

from jobwire.store.base import (
    EventQuery,
    Intake,
    OutboxRow,
    Page,
    PruneResult,
    PruneRule,
    Recorded,
    RunQuery,
    Store,
    StoredJob,
    StoreError,
    StoreLocked,
)

__all__ = [
    "EventQuery",
    "Intake",
    "OutboxRow",
    "Page",
    "PruneResult",
    "PruneRule",
    "Recorded",
    "RunQuery",
    "Store",
    "StoredJob",
    "StoreError",
    "StoreLocked",
    "open_store",
]


def open_store(url: str) -> Store:
    """`sqlite:///path/to/file.db`, `memory://`. (PostgreSQL: `postgresql://...`, a later module.)"""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from jobwire.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme == "memory":
        from jobwire.store.memory import MemoryStore

        return MemoryStore()
    raise StoreError(f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH or memory://")
