"""A fresh PostgreSQL database per test, `jwtest_<uuid>`, dropped at the end (WITH FORCE), on
JOBWIRE_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres). Without PostgreSQL
the test skips — and fails when CI=true."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

ADMIN_DSN = os.environ.get("JOBWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


async def admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database() -> tuple[str, str]:
    """A new, empty database: (its name, its URL). Skips the test without PostgreSQL (fails in CI)."""
    name = f"jwtest_{uuid.uuid4().hex[:16]}"
    try:
        await admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        why = f"PostgreSQL is not reachable at {ADMIN_DSN} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI needs it")
        pytest.skip(why)
    return name, f"{ADMIN_DSN.rpartition('/')[0]}/{name}"


async def drop_database(name: str) -> None:
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped when the block ends."""
    name, url = await create_database()
    try:
        yield url
    finally:
        await drop_database(name)
