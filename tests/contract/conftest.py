"""The store contract suite runs against every store. To add one, write a factory and add ONE
line to `FACTORIES` (e.g. `"postgres": postgres_store,` with a factory that makes a fresh schema).

A factory takes a fresh folder and returns an unopened store of its kind, empty. `store` is an open
store; `make_store` opens more fresh ones (for hypothesis examples, which share one fixture).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from jobwire.store import Store
from jobwire.store.memory import MemoryStore
from jobwire.store.sqlite import SQLiteStore

StoreFactory = Callable[[Path], Awaitable[Store]]


async def memory_store(folder: Path) -> Store:
    return MemoryStore()


async def sqlite_store(folder: Path) -> Store:
    return SQLiteStore(f"sqlite:///{folder / 'jobwire.db'}", synchronous="NORMAL")


FACTORIES: dict[str, StoreFactory] = {
    "memory": memory_store,
    "sqlite": sqlite_store,
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
