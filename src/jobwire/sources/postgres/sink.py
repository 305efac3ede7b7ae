"""The `postgres` status sink: a run's progress written back to the row that made it.

Each status document of a run updates `SET <status_column> = <status> WHERE <run_id_column> =
<run id>` (and the error column with the error's message when the run failed) in every table a
postgres trigger of that job serves with a `run_id_column`: `running`, `succeeded`, `failed`
(failed, timed out, cancelled, interrupted), `scheduled` (queued, or waiting for a retry). The run
id is the key because it is what a status document and the row share (the source writes it when
it claims the row). Which tables serve which jobs comes from the running sources (`ROUTES`), so a
job-file reload changes it without a restart. A document for a run that is not in the table
updates nothing and is not retried — unless this process is claiming that row right now (the
claim not yet committed): then the sink waits for the commit and updates after it, so a fast
run's `running` is not lost to the race with its own claim.

The engine builds it through the plug's `sink` hook (`status.build_sink`): on when
`JOBWIRE_POSTGRES_STATUS` is true, by default when `JOBWIRE_POSTGRES_DSN` is set. It is an
ordinary in-memory sink (the engine retries a failed `publish` up to `max_attempts`): a document
that could not be written while the database was away for longer is lost to the row, not to the
API. The layer contract keeps `jobwire.sources` from importing `jobwire.sinks`, so the class
implements the Sink interface (`kind`, `durable`, `max_attempts`, `start`, `close`, `publish`)
without subclassing it.
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
from jobwire.sinks.base import Sink
from jobwire.sources.base import Binding
from jobwire.sources.postgres.source import CLAIMS, ROW_STATUS, Routes, StatusTarget, routes_for
from jobwire.sources.postgres.spec import PostgresSettings
from jobwire.sources.postgres.sql import SINK_APPLICATION, status_sql

log = structlog.get_logger(__name__)

CLAIM_WAIT = 30.0
"""Seconds the sink waits for a claim of this process to commit before giving up on a document."""


class StatusWriteError(Exception):
    """The status could not be written (connection lost, the statement failed): retry."""


class PostgresStatusSink(Sink):
    kind: ClassVar[str] = "postgres"
    max_attempts: int = 5

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self._conns: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self.written = 0
        """Rows updated."""
        self.statements = 0
        """UPDATE statements run."""

    async def start(self) -> None:
        """Connect lazily: a database that is down must not keep jobwire from starting."""

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

    async def publish(self, doc: StatusDocument) -> None:
        try:
            state = RunState(doc.action)
        except ValueError:
            return  # not a run state: nothing to write
        status = ROW_STATUS[state]
        error = doc.error.message if doc.error is not None and status == "failed" else None
        failed: list[StatusWriteError] = []
        for target in self.routes.for_job(doc.job):
            # Looked up before the update: a claim committed while the update ran is set by then
            # (and gone from the book), and the update may have seen the row from before it.
            claim = CLAIMS.pending((target.dsn, target.table), doc.run_id)
            try:
                updated = await self._update(target, status, doc.run_id, error)
                if updated == 0 and claim is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(claim.wait(), CLAIM_WAIT)
                    updated = await self._update(target, status, doc.run_id, error)
            except StatusWriteError as exc:  # one database away must not keep the others waiting
                failed.append(exc)
                continue
            self.written += updated
            log.debug("row status", table=target.table, run_id=doc.run_id, status=status, rows=updated)
        if failed:
            raise failed[0]  # the engine publishes the document again: the updates are idempotent

    async def _update(self, target: StatusTarget, status: str, run_id: str, error: str | None) -> int:
        args: list[Any] = [status, run_id]
        if target.error is not None:
            args.append(error)
        sql = status_sql(target.table, target.status, target.run_id, target.error)
        async with self._lock:
            conn = self._conns.get(target.dsn)
            try:
                if conn is None or conn.is_closed():
                    conn = self._conns[target.dsn] = await asyncpg.connect(
                        target.dsn, timeout=10, server_settings={"application_name": SINK_APPLICATION}
                    )
                result: str = await conn.execute(sql, *args)
                self.statements += 1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._conns.pop(target.dsn, None)
                if conn is not None:
                    conn.terminate()
                where = f"{mask_url(target.dsn)} table {target.table}"
                raise StatusWriteError(f"postgres {where}: {type(exc).__name__}: {exc}") from exc
        return int(result.rsplit(" ", 1)[-1])  # "UPDATE <n>"


def build_sinks(bindings: Sequence[Binding], settings: PostgresSettings | None) -> list[PostgresStatusSink]:
    """A status sink for exactly these bindings (the engine's sink reads every running source's)."""
    routes = Routes()
    routes.register("bindings", routes_for(bindings, settings or PostgresSettings()))
    return [PostgresStatusSink(routes)]
