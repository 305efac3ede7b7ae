"""Stores: where definitions, events and runs live. `open_store(url)` picks one by URL scheme."""

from __future__ import annotations

from jobwire.store.base import (
    LEADER,
    Activity,
    ActivityCount,
    EventQuery,
    Fence,
    Fenced,
    Intake,
    Lease,
    OutboxRow,
    Page,
    PruneResult,
    PruneRule,
    Recorded,
    ReplicaRow,
    RunQuery,
    SourceCount,
    Store,
    StoredJob,
    StoreError,
    StoreLocked,
)

__all__ = [
    "Activity",
    "ActivityCount",
    "LEADER",
    "EventQuery",
    "Fence",
    "Fenced",
    "Intake",
    "Lease",
    "OutboxRow",
    "Page",
    "PruneResult",
    "PruneRule",
    "Recorded",
    "ReplicaRow",
    "RunQuery",
    "SourceCount",
    "Store",
    "StoredJob",
    "StoreError",
    "StoreLocked",
    "open_store",
]


def open_store(url: str, *, pool_size: int | None = None, auto_migrate: bool | None = None) -> Store:
    """`sqlite:///path/to/file.db`, `memory://`, `postgresql://…` (or `postgres://…`; the
    `postgres` extra). For PostgreSQL, `auto_migrate` None reads JOBWIRE_DB_AUTO_MIGRATE."""
    scheme = url.split(":", 1)[0]
    if scheme in ("postgresql", "postgres"):
        try:
            from jobwire.store import postgres
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"the PostgreSQL store needs the Python package {exc.name!r}: pip install 'jobwire[postgres]'"
            ) from None
        return postgres.PostgresStore(
            url,
            pool_size=postgres.DEFAULT_POOL_SIZE if pool_size is None else pool_size,
            auto_migrate=postgres.env_auto_migrate() if auto_migrate is None else auto_migrate,
        )
    if scheme == "sqlite":
        from jobwire.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme == "memory":
        from jobwire.store.memory import MemoryStore

        return MemoryStore()
    raise StoreError(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH, postgresql://… or memory://"
    )
