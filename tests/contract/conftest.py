"""The store contract suite runs against every store. To add one, write a factory and add ONE
line to `FACTORIES`. PostgreSQL: each store on a fresh database `jwtest_<uuid>` (on
JOBWIRE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres), dropped when the
store closes; without PostgreSQL those tests skip, and fail when CI=true.

A factory takes a fresh folder and returns an unopened store of its kind, empty. `store` is an open
store; `make_store` opens more fresh ones (for hypothesis examples, which share one fixture).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from jobwire.store import Store
from jobwire.store.memory import MemoryStore
from jobwire.store.sqlite import SQLiteStore

PG_ADMIN_DSN = os.environ.get("JOBWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
_pg_databases: list[str] = []
"""Databases the postgres factory made; each store drops its own on close, the rest at session end."""

StoreFactory = Callable[[Path], Awaitable[Store]]


async def memory_store(folder: Path) -> Store:
    return MemoryStore()


async def sqlite_store(folder: Path) -> Store:
    return SQLiteStore(f"sqlite:///{folder / 'jobwire.db'}", synchronous="NORMAL")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_store(folder: Path) -> Store:
    """A fresh database `jwtest_<uuid>` (migrated at open), dropped when the store closes. Without
    PostgreSQL the test skips — and fails when CI=true."""
    from jobwire.store.postgres import PostgresStore

    name = f"jwtest_{uuid.uuid4().hex[:16]}"
    try:
        await _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        why = f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI needs it")
        pytest.skip(why)
    _pg_databases.append(name)

    class ThrowawayPostgresStore(PostgresStore):
        async def close(self) -> None:
            try:
                await super().close()
            finally:
                await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                _pg_databases.remove(name)

    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return ThrowawayPostgresStore(f"{base}/{name}", pool_size=4, auto_migrate=True)


@pytest.fixture(scope="session", autouse=True)
def _drop_leftover_pg_databases() -> Iterator[None]:
    """A store whose open() failed was never closed: drop its database at the end of the session."""
    yield
    if _pg_databases:
        import asyncio

        async def drop() -> None:
            for name in list(_pg_databases):
                await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            _pg_databases.clear()

        asyncio.run(drop())


FACTORIES: dict[str, StoreFactory] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
    "postgres": postgres_store,
}

MakeStore = Callable[[], AbstractAsyncContextManager[Store]]


@pytest.fixture(params=list(FACTORIES))
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(store_kind: str, tmp_path: Path) -> MakeStore:
    counter = itertools.count()
    factory = FACTORIES[store_kind]

    @asynccontextmanager
    async def make() -> AsyncIterator[Store]:
        folder = tmp_path / f"store{next(counter)}"
        folder.mkdir()
        store = await factory(folder)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    return make


@pytest.fixture
async def store(make_store: MakeStore) -> AsyncIterator[Store]:
    async with make_store() as s:
        yield s
