"""The `postgres` status sink: a run's progress written back to the row that made it.

For every table served with a `run_id_column`, each status document of a run updates
`SET <status_column> = <status> WHERE <run_id_column> = <run_id>` (and the error column with the
error's message when the run failed): `running`, `succeeded`, `failed` (failed, timed out,
cancelled, interrupted), `scheduled` (queued or waiting for a retry). The run id is the key
because it is the one thing a status document and the row share (the source writes it when it
claims the row). A document for a run that is not in the table updates nothing and is not retried
— unless this process is claiming that row right now (the claim not yet committed): then the
sink waits for the commit and updates after it, so a fast run's `running` is not lost to the
race with its own claim.

Wiring: the engine builds its sinks from `settings.sinks` (`jobwire.sinks.build_sinks`) and has
no way yet for a source plug to add one, and the layer contract (`jobwire.sources` and
`jobwire.sinks` are independent) keeps this module from subclassing `jobwire.sinks.base.Sink`.
So `PostgresStatusSink` implements the Sink interface structurally (`kind`, `max_attempts`,
`start`, `close`, `publish`) and `build_sinks(bindings, settings)` makes them from the same
bindings the source gets; the engine has to call it (see the README's PostgreSQL section).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg  # type: ignore[import-untyped]
import structlog

from jobwire.model import RunState, StatusDocument
from jobwire.redact import mask_url
from jobwire.sources.base import Binding
from jobwire.sources.postgres.source import CLAIMS, ROW_STATUS
from jobwire.sources.postgres.spec import PostgresSettings
from jobwire.sources.postgres.sql import SINK_APPLICATION, status_sql

log = structlog.get_logger(__name__)

CLAIM_WAIT = 30.0
"""Seconds the sink waits for a claim of this process to commit before giving up on a document."""


class StatusWriteError(Exception):
    """The status could not be written (connection lost, the statement failed): retry."""


class PostgresStatusSink:
    kind: ClassVar[str] = "postgres"
    max_attempts: int = 5

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        status_column: str,
        run_id_column: str,
        error_column: str | None,
        jobs: frozenset[str] | None,
    ) -> None:
        self.dsn = dsn
        self.table = table
        self.jobs = jobs
        """Only these jobs' runs can come from this table; None: any job (the table-wide intake)."""
        self.sql = status_sql(table, status_column, run_id_column, error_column)
        self.with_error = error_column is not None
        self.destination = f"{mask_url(dsn)} table {table}"
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self.written = 0
        """Rows updated."""
        self.statements = 0
        """UPDATE statements run."""

    async def start(self) -> None:
        """Connect lazily: a database that is down must not keep jobwire from starting."""

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

    async def publish(self, doc: StatusDocument) -> None:
        try:
            state = RunState(doc.action)
        except ValueError:
            return  # not a run state: nothing to write
        if self.jobs is not None and doc.job not in self.jobs:
            return
        status = ROW_STATUS[state]
        error = doc.error.message if doc.error is not None and status == "failed" else None
        # Looked up before the update: a claim committed while the update ran is set by then (and
        # gone from the book), and the update may have seen the row from before that commit.
        claim = CLAIMS.pending((self.dsn, self.table), doc.run_id)
        updated = await self._update(status, doc.run_id, error)
        if updated == 0 and claim is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(claim.wait(), CLAIM_WAIT)
            updated = await self._update(status, doc.run_id, error)
        self.written += updated
        log.debug("row status written", table=self.table, run_id=doc.run_id, status=status, rows=updated)

    async def _update(self, status: str, run_id: str, error: str | None) -> int:
        args: list[Any] = [status, run_id]
        if self.with_error:
            args.append(error)
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await asyncpg.connect(
                        self.dsn, timeout=10, server_settings={"application_name": SINK_APPLICATION}
                    )
                result: str = await self._conn.execute(self.sql, *args)
                self.statements += 1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.terminate()
                raise StatusWriteError(f"postgres {self.destination}: {type(exc).__name__}: {exc}") from exc
        return int(result.rsplit(" ", 1)[-1])  # "UPDATE <n>"


def build_sinks(bindings: Sequence[Binding], settings: PostgresSettings | None) -> list[PostgresStatusSink]:
    """One status sink per (dsn, table, status and run id columns) among `bindings` that name a
    run id column; a binding without one gets only `scheduled` (written by the source)."""
    settings = settings or PostgresSettings()
    groups: dict[tuple[str, str, str, str, str | None], set[str] | None] = {}
    for b in bindings:
        t = b.trigger
        dsn = t.dsn or settings.dsn
        if not dsn or t.run_id_column is None:
            continue
        key = (dsn, t.table, t.status_column, t.run_id_column, t.error_column)
        jobs = groups.get(key, set())
        if jobs is None or b.job is None:
            groups[key] = None
        else:
            groups[key] = jobs | {b.job}
    return [
        PostgresStatusSink(
            dsn,
            table,
            status_column=status,
            run_id_column=run_id,
            error_column=error,
            jobs=None if jobs is None else frozenset(jobs),
        )
        for (dsn, table, status, run_id, error), jobs in sorted(groups.items(), key=lambda kv: kv[0][:4])
    ]
