"""`jobwire db install-trigger`: seed 001's notifier function and trigger, on the table given
(asyncpg; the `postgres` pip extra). The SQL itself is `sql.install_sql` (shown by `--print`)."""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]

from jobwire.sources.postgres.sql import install_sql


async def install_trigger(dsn: str, table: str, channel: str) -> str:
    """Run the install SQL (one transaction, idempotent) and return it."""
    sql = install_sql(table, channel)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)  # no arguments: the simple query protocol runs every statement
    finally:
        await conn.close()
    return sql
