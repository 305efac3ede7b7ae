"""PostgreSQL store (asyncpg, pooled): `postgresql://user:password@host:5432/db`.

Same semantics as the SQLite store (`store/sqlite.py`), the same contract suite. Its SQL is in
`store/sql/postgres/queries.sql` (named queries) and `store/sql/postgres/migrations/NNNN_*.sql`.

- Group commit: `commit(batch, updates, outbox, fence)` is ONE statement over arrays (`unnest`,
  `commit_batch`, or `commit_intakes` for intakes alone, in sql/postgres/commit.sql), whatever the
  batch size: the fence check, the runs,
  the events, the state changes and the outbox rows in one round trip, atomic on its own (no
  BEGIN/COMMIT). Two cases take a transaction instead: a batch with a repeated run key (the
  statement writes nothing; the transaction reads the runs that exist and marks its duplicates)
  and a batch whose runs claim concurrency slots (the pair's advisory lock comes first, pgslots.py).
- Pool connections are not reset when they go back to the pool (asyncpg's default runs four
  statements, a round trip, per use): the store keeps no session state on them — no SET, LISTEN,
  session advisory lock or cursor (the bus and migrations use connections of their own).
- The run key is unique: `ON CONFLICT DO NOTHING` plus a read of the existing run makes a repeat a
  `duplicate` event pointing at it (also a repeat inside one batch, and across concurrent
  transactions: PostgreSQL makes the second insert wait for the first to commit).
- Migrations: `migrate()` applies them under an advisory lock (`jobwire db upgrade`). `open()`
  refuses a database whose schema is older than this jobwire's (saying to run `jobwire db upgrade`)
  unless `auto_migrate` (JOBWIRE_DB_AUTO_MIGRATE=true), and one newer than it knows.
- Several replicas on one database (docs/replicas.md): the `replicas` table (heartbeats), the
  `leases` table (the leader lease and its fencing token, checked `FOR SHARE` as the first statement
  of a fenced commit) and `runs.owner` (claimed with `FOR UPDATE SKIP LOCKED`), migration 0003.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import structlog
from pydantic_core import to_json

from jobwire.model import ACTIVE_STATES, Event, EventOutcome, Job, Run, RunState, utcnow
from jobwire.store.base import (
    Activity,
    ActivityCount,
    Bus,
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
    known_if_same,
    read_on,
)
from jobwire.store.pgbus import PgBus
from jobwire.store.pgslots import apply_claims, promote
from jobwire.store.queries import (
    InvalidCursorError,
    Queries,
    check_buckets,
    check_limit,
    decode_cursor,
    encode_cursor,
    from_us,
    load_migrations,
    to_us,
)

Q = Queries("postgres")
log = structlog.get_logger(__name__)

DEFAULT_POOL_SIZE = 10
CONNECT_TIMEOUT = 10.0
# Advisory lock key (bigint) of the migration lock. Arbitrary, fixed. (…6501 was the single-jobwire
# lock of version 1, replaced by the replica registry: not reused.)
MIGRATE_LOCK_KEY = 0x6A6F_6277_6972_6502
APPLICATION_NAME = "jobwire-store"
IDLE_IN_TRANSACTION_MS = 10_000
LEASE_WAIT = 2.0
"""Seconds an acquisition waits for a fenced transaction that holds the lease row (FOR SHARE)."""
SAVE_CHUNK = 5000
"""Job definitions per statement in `save_jobs` (all of them in one transaction)."""

_LISTED_ACTIVE = frozenset({RunState.queued, *ACTIVE_STATES})
_ACTIVE_TERM = "state IN ('queued', 'pending', 'running')"
UPGRADE_HINT = "run `jobwire db upgrade` (or set JOBWIRE_DB_AUTO_MIGRATE=true to migrate at start)"


def mask(url: str) -> str:
    """The URL without its password (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://…"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:****@{host}" if parts.username else f"****@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _ts(dt: datetime | None) -> datetime | None:
    """An aware datetime for a timestamptz column; a naive one is taken as UTC (as `to_us` does)."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)


def _json(value: Any) -> str:
    return to_json(value).decode()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing (see the module doc). asyncpg still rolls back a transaction
    left open before calling it."""


# --------------------------------------------------------------------------- row mapping


def _run_columns(runs: Sequence[Run]) -> list[list[Any]]:
    """The runs as 22 parallel arrays (record_batch's $1-$22), serialized now: a snapshot."""
    cols: list[list[Any]] = [[] for _ in range(22)]
    for run in runs:
        row = (
            run.id,
            run.key,
            run.job,
            run.trigger,
            run.event_id,
            run.state.value,
            run.attempt,
            _json(run.params),
            run.concurrency_key,
            _ts(run.created_at),
            _ts(run.scheduled_at),
            _ts(run.not_before),
            _ts(run.started_at),
            _ts(run.finished_at),
            run.exit_code,
            run.http_status,
            None if run.error is None else _json(run.error),
            run.target_ref,
            _json(run.target_status),
            _json(run.history),
            run.input_location,
            run.environment,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


def _update_columns(runs: Sequence[Run]) -> list[list[Any]]:
    """update_runs' 21 arrays: every column but the key. The last state of a run counts."""
    last = {r.id: r for r in runs}
    cols = _run_columns(list(last.values()))
    return [cols[0], *cols[2:]]


def _event_row(event: Event) -> tuple[Any, ...]:
    return (
        event.id,
        event.job,
        event.trigger,
        event.source,
        _ts(event.received_at),
        _ts(event.scheduled_at),
        None if event.payload is None else _json(event.payload),
        event.outcome.value,
        event.run_id,
        event.reason,
        event.input_location,
    )


def _columns(events: Sequence[Event]) -> list[list[Any]]:
    """The events as 11 parallel arrays (record_batch's $23-$33)."""
    cols: list[list[Any]] = [[] for _ in range(11)]
    for event in events:
        for col, value in zip(cols, _event_row(event), strict=True):
            col.append(value)
    return cols


def _run_from_row(row: Sequence[Any]) -> Run:
    return Run.model_validate(
        {
            "id": row[0],
            "key": row[1],
            "job": row[2],
            "trigger": row[3],
            "event_id": row[4],
            "state": row[5],
            "attempt": row[6],
            "params": json.loads(row[7]),
            "concurrency_key": row[8],
            "created_at": row[9],
            "scheduled_at": row[10],
            "not_before": row[11],
            "started_at": row[12],
            "finished_at": row[13],
            "exit_code": row[14],
            "http_status": row[15],
            "error": None if row[16] is None else json.loads(row[16]),
            "target_ref": row[17],
            "target_status": json.loads(row[18]),
            "history": json.loads(row[19]),
            "input_location": row[20],
            "environment": row[21],
        }
    )


def _event_from_row(row: Sequence[Any]) -> Event:
    return Event.model_validate(
        {
            "id": row[0],
            "job": row[1],
            "trigger": row[2],
            "source": row[3],
            "received_at": row[4],
            "scheduled_at": row[5],
            "payload": None if row[6] is None else json.loads(row[6]),
            "outcome": row[7],
            "run_id": row[8],
            "reason": row[9],
            "input_location": row[10],
        }
    )


def _job_from_row(row: Sequence[Any]) -> StoredJob:
    return StoredJob(
        job=Job.model_validate_json(row[1]), origin=row[2], paused=bool(row[3]), updated_at=row[4]
    )


def duplicate_reason(existing: Run) -> str:
    return f"run key already has run {existing.id}"


# --------------------------------------------------------------------------- migrations


def latest_version() -> int:
    return len(load_migrations("postgres"))


async def schema_version(conn: asyncpg.Connection) -> int:
    """The version the database is at (0 for an empty one)."""
    has = await conn.fetchval("SELECT to_regclass('jobwire_schema_version') IS NOT NULL")
    if not has:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM jobwire_schema_version"))


def _too_new(current: int, latest: int) -> StoreError:
    return StoreError(
        f"the database schema is at version {current}, newer than this jobwire knows ({latest}); "
        "upgrade jobwire or point it at another database"
    )


async def migrate(conn: asyncpg.Connection, target: int | None = None) -> list[int]:
    """Apply the migrations after the database's version up to `target` (default: all), each in
    its own transaction with its `jobwire_schema_version` row, under a session advisory lock (two
    `jobwire db upgrade` at once: the second waits, then finds nothing to do). Returns the versions
    applied."""
    migrations = load_migrations("postgres")
    latest = len(migrations)
    target = latest if target is None else target
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS jobwire_schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
        )
        current = await schema_version(conn)
        if current > latest:
            raise _too_new(current, latest)
        applied: list[int] = []
        for version, name, sql in migrations:
            if version <= current or version > target:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO jobwire_schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                        version,
                        name,
                        utcnow(),
                    )
            except asyncpg.PostgresError as exc:
                raise StoreError(f"migration {version:04d}_{name}.sql failed: {exc}") from exc
            applied.append(version)
        return applied
    finally:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK_KEY)


async def upgrade(url: str) -> tuple[int, list[int]]:
    """`jobwire db upgrade`: connect, migrate to the latest schema. (version before, applied)."""
    conn = await _connect(url)
    try:
        before = await schema_version(conn)
        return before, await migrate(conn)
    finally:
        await conn.close()


async def _connect(url: str) -> asyncpg.Connection:
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            url, timeout=CONNECT_TIMEOUT, server_settings={"application_name": APPLICATION_NAME}
        )
    except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {mask(url)}: {_describe(exc)}") from exc
    return conn


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, asyncpg.PostgresError) else f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- errors

_ClientDataError = asyncpg.exceptions._base.DataError  # client side: "invalid input for query argument"
# The store cannot take writes now (retry later; no item is at fault).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08xxx
    asyncpg.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.InsufficientResourcesError,  # 53xxx: disk full (DiskFullError), out of memory
    asyncpg.OperatorInterventionError,  # 57xxx: admin/crash shutdown, query cancelled
    asyncpg.TransactionRollbackError,  # 40xxx: serialization failure, deadlock — retry
    asyncpg.LockNotAvailableError,  # 55P03
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby after a failover
    asyncpg.InternalServerError,  # XX000 and friends
    asyncpg.InterfaceError,  # connection closed / lost while in use
    asyncpg.exceptions.PostgresSystemError,  # 58xxx: I/O errors
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)
# A value in the batch is at fault: the committer retries the items one by one.
_ITEM: tuple[type[BaseException], ...] = (
    asyncpg.DataError,  # 22xxx incl. NUL in text (22021), untranslatable characters (22P05)
    asyncpg.IntegrityConstraintViolationError,  # 23xxx: repeated event id, unknown event of a run
    UnicodeError,
    ValueError,
    TypeError,
    OverflowError,
)


class PostgresStore(Store):
    shared = True
    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE, auto_migrate: bool = False) -> None:
        scheme = url.split(":", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise StoreError(f"not a PostgreSQL URL: expected postgresql://…, got {scheme}://…")
        if pool_size < 1:
            raise StoreError(f"the PostgreSQL pool size must be at least 1, got {pool_size}")
        self.url = url
        self.pool_size = pool_size
        self.auto_migrate = auto_migrate
        self._pool: asyncpg.Pool | None = None
        self._incarnations: dict[str, datetime] = {}
        """started_at of each replica registered through this store: its heartbeat names it, so a
        stale process with a reused replica id cannot keep a new incarnation's row alive."""
        self._bus: PgBus | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({mask(self.url)!r})"

    # ---- lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError(f"{self!r} is already open")
        conn = await _connect(self.url)
        try:
            current, latest = await schema_version(conn), latest_version()
            if current > latest:
                raise _too_new(current, latest)
            if current < latest:
                if not self.auto_migrate:
                    raise StoreError(
                        f"the database schema at {mask(self.url)} is at version {current}, this jobwire "
                        f"needs version {latest}: {UPGRADE_HINT}"
                    )
                await migrate(conn)
            pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=CONNECT_TIMEOUT,
                reset=_keep_session,
                server_settings={
                    "application_name": APPLICATION_NAME,
                    # a replica paused inside a transaction (SIGSTOP) must not hold its locks — the
                    # leader lease's FOR SHARE among them — for ever: PostgreSQL ends its session
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
                },
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.close()
            if isinstance(
                exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | asyncio.TimeoutError
            ):
                raise StoreError(f"cannot open {mask(self.url)}: {_describe(exc)}") from exc
            raise
        with contextlib.suppress(Exception):
            await conn.close()
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
            pool.terminate()

    def _p(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"{self!r} is not open: call open() first")
        return self._pool

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"{mask(self.url)}: {_describe(exc)}")

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            rows: list[asyncpg.Record] = await self._p().fetch(sql, *args)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        return rows

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    # ---- jobs

    async def save_job(self, job: Job, origin: str) -> StoredJob:
        row = await self._fetchrow(
            Q.upsert_job, job.name, job.model_dump_json(), origin, job.paused, utcnow()
        )
        assert row is not None
        return StoredJob(job=job, origin=row[2], paused=bool(row[3]), updated_at=row[4])

    async def save_jobs(self, jobs: Sequence[tuple[Job, str]]) -> list[StoredJob]:
        """One transaction, a statement per `SAVE_CHUNK` definitions (one round trip each, not one
        per job: 100,000 definitions took 80-94 s one by one)."""
        if not jobs:
            return []  # a reload with nothing changed: no transaction
        if len({job.name for job, _ in jobs}) < len(jobs):
            return await super().save_jobs(jobs)  # a name twice: in order, the later one wins
        now = utcnow()
        paused: dict[str, bool] = {}
        try:
            async with self._p().acquire() as conn, conn.transaction():
                for at in range(0, len(jobs), SAVE_CHUNK):
                    chunk = jobs[at : at + SAVE_CHUNK]
                    rows = await conn.fetch(
                        Q.upsert_jobs,
                        [job.name for job, _ in chunk],
                        [job.model_dump_json() for job, _ in chunk],
                        [origin for _, origin in chunk],
                        [job.paused for job, _ in chunk],
                        now,
                    )
                    paused.update((row[0], bool(row[1])) for row in rows)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        return [
            StoredJob(job=job, origin=origin, paused=paused[job.name], updated_at=now)
            for job, origin in jobs
        ]

    async def get_job(self, name: str) -> StoredJob | None:
        row = await self._fetchrow(Q.get_job, name)
        return None if row is None else _job_from_row(row)

    async def list_jobs(self) -> list[StoredJob]:
        return [_job_from_row(r) for r in await self._fetch(Q.list_jobs)]

    async def list_jobs_reusing(self, known: Mapping[str, Job]) -> list[StoredJob]:
        """`list_jobs`, a definition stored as `known`'s dump taken as that object. It runs on the
        event loop: with 100,000 jobs it yields every 1,000, so the heartbeat and the API go on."""
        out = []
        for i, row in enumerate(await self._fetch(Q.list_jobs)):
            if i % 1000 == 999:
                await asyncio.sleep(0)
            job = known_if_same(known, row[0], row[1])
            if job is not None:
                out.append(StoredJob(job=job, origin=row[2], paused=bool(row[3]), updated_at=row[4]))
            else:
                out.append(_job_from_row(row))
        return out

    async def delete_job(self, name: str) -> bool:
        rows = await self._fetch(Q.delete_job + " RETURNING name", name)
        return bool(rows)

    async def delete_jobs(self, names: Sequence[str]) -> None:
        if names:
            await self._fetch(Q.delete_jobs, list(names))

    async def set_paused(self, name: str, paused: bool) -> StoredJob | None:
        row = await self._fetchrow(Q.set_paused, name, paused, utcnow())
        return None if row is None else _job_from_row(row)

    # ---- events and runs

    async def record(self, batch: list[Intake]) -> list[Recorded]:
        return await self.commit(batch, []) if batch else []

    async def update_runs(self, runs: list[Run]) -> list[str]:
        if not runs:
            return []
        cols = _update_columns(runs)
        rows = await self._fetch(Q.update_runs_with_outbox, *cols, [], [], None)
        return _refused(cols[0], rows)

    # ---- what the replicas share (docs/replicas.md)

    def bus(self) -> Bus:
        if self._bus is None:
            self._bus = PgBus(self.url, self._p, mask(self.url))
        return self._bus

    async def shared_secret(self, name: str, initial: bytes | None = None) -> bytes:
        row = await self._fetchrow(Q.shared_secret, name, initial)
        assert row is not None
        return bytes(row[0])

    async def claim_slot(self, run: Run, limit: int) -> bool:
        try:
            async with self._p().acquire() as conn, conn.transaction():
                return await promote(conn, run.id, run.job, run.concurrency_key, limit)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc

    def unavailable(self, exc: BaseException) -> bool:
        cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
        if isinstance(cause, _ClientDataError):  # a value asyncpg cannot encode (an InterfaceError)
            return False
        if isinstance(cause, _UNAVAILABLE):
            return True
        if isinstance(cause, (*_ITEM, asyncpg.PostgresError)):
            return False  # any other server error names a statement or a value, not the store's state
        return isinstance(exc, StoreError | OSError)

    async def commit(
        self,
        batch: list[Intake],
        updates: list[Run],
        outbox: Sequence[OutboxRow] = (),
        fence: Fence | None = None,
    ) -> list[Recorded]:
        # Everything is serialized here, before the first await: that is the snapshot.
        events = [
            i.event
            if i.run is None or i.event.run_id == i.run.id
            else i.event.model_copy(update={"run_id": i.run.id})
            for i in batch
        ]
        record_args: list[Any] = [
            *_run_columns([i.run for i in batch if i.run is not None]),
            *_columns(events),
            None if fence is None else fence.replica,
        ]
        fenced = fence is not None and fence.token is not None
        upd_cols = _update_columns(updates) if updates else None
        out_cols = [[r.sink for r in outbox], [r.doc for r in outbox]] if outbox else None
        written: list[asyncpg.Record] = []
        try:
            if not batch and not fenced:
                # State changes (and their status documents): one statement, atomic on its own.
                if upd_cols is None:
                    await self._p().execute(Q.insert_outbox, *(out_cols or [[], []]))
                else:
                    written = await self._p().fetch(
                        Q.update_runs_with_outbox, *upd_cols, *(out_cols or [[], []]), record_args[-1]
                    )
                    self.refused(_refused(upd_cols[0], written))
                return []
            if not any(_claims_slot(i) for i in batch):
                fences = [fence.lease, fence.replica, fence.token] if fenced and fence else [None] * 3
                done = await self._commit_one(record_args, fences, upd_cols, out_cols, fence)
                if done is not None:
                    inserted, updated = done
                    if len(inserted) == len(record_args[0]):  # every run new: all of it is written
                        if upd_cols is not None:
                            self.refused([i for i in upd_cols[0] if i not in updated])
                        return [Recorded(event=e, run=i.run) for i, e in zip(batch, events, strict=True)]
                # a run key was taken: nothing was written; the transaction below marks the duplicates
            async with self._p().acquire() as conn, conn.transaction():
                if fenced:
                    assert fence is not None
                    await _check_fence(conn, fence)
                claimed = await apply_claims(conn, batch)
                if claimed.changed:  # slot claims refused or queued runs: write what was decided
                    batch = claimed.batch
                    events = [
                        i.event
                        if i.run is None or i.event.run_id == i.run.id
                        else i.event.model_copy(update={"run_id": i.run.id})
                        for i in batch
                    ]
                    record_args = [
                        *_run_columns([i.run for i in batch if i.run is not None]),
                        *_columns(events),
                        record_args[-1],  # the owner
                    ]
                recorded = await self._record(conn, batch, events, record_args) if batch else []
                for rec in recorded:
                    if rec.run is not None and rec.run.id in claimed.victims:
                        rec.victims = claimed.victims[rec.run.id]
                if upd_cols is not None:
                    written = await conn.fetch(Q.update_runs, *upd_cols, record_args[-1])
                if out_cols is not None:
                    await conn.execute(Q.insert_outbox, *out_cols)
            if upd_cols is not None:
                self.refused(_refused(upd_cols[0], written))
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            if isinstance(exc, asyncpg.UniqueViolationError) and "events" in (exc.table_name or ""):
                raise StoreError(f"cannot record the batch: {exc} (event ids must be unique)") from exc
            raise self._error(exc) from exc
        return recorded

    async def _commit_one(
        self,
        record_args: list[Any],
        fences: list[Any],
        upd_cols: list[list[Any]] | None,
        out_cols: list[list[Any]] | None,
        fence: Fence | None,
    ) -> tuple[list[str], set[str]] | None:
        """`commit_batch` (`commit_intakes` without updates and outbox rows): (the runs inserted,
        the runs updated); None when the statement failed on the foreign key of a run whose key was
        taken (nothing written). Raises Fenced."""
        try:
            if upd_cols is None and out_cols is None:
                rows = await self._p().fetch(Q.commit_intakes, *record_args, *fences)
            else:
                rest = [*(upd_cols or _NO_UPDATES), *(out_cols or [[], []])]
                rows = await self._p().fetch(Q.commit_batch, *record_args, *fences, *rest)
        except asyncpg.ForeignKeyViolationError as exc:
            if (exc.table_name or "") != "runs":
                raise
            return None
        if rows and rows[0][0] == "f":
            assert fence is not None
            raise _fenced(fence)
        return [r[1] for r in rows if r[0] == "r"], {r[1] for r in rows if r[0] == "u"}

    # ---- replicas, leases, claims (docs/replicas.md)

    async def register_replica(
        self, replica: str, role: str, ttl: float, host: str = "", pid: int = 0
    ) -> None:
        row = await self._fetchrow(Q.register_replica, replica, role, ttl, host, pid)
        if row is None:
            raise StoreError(
                f"a live replica with id {replica!r} is registered already on {mask(self.url)}: "
                "each replica needs its own JOBWIRE_REPLICA_ID (or none: a fresh one is made)"
            )
        self._incarnations[replica] = row[0]

    async def heartbeat(self, replica: str, ttl: float) -> bool:
        started = self._incarnations.get(replica)
        if started is None:
            return False
        return await self._fetchrow(Q.heartbeat, replica, ttl, started) is not None

    async def unregister_replica(self, replica: str) -> None:
        started = self._incarnations.pop(replica, None)
        if started is not None:  # only a row this store registered: never another process's
            await self._fetch(Q.unregister_replica, replica, started)

    async def replicas(self) -> list[ReplicaRow]:
        return [
            ReplicaRow(
                id=r[0], role=r[1], started_at=r[2], heartbeat_at=r[3], expires_at=r[4], alive=r[5],
                host=r[6], pid=r[7],
            )
            for r in await self._fetch(Q.list_replicas)
        ]

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        try:
            row = await self._p().fetchrow(Q.acquire_lease, name, holder, ttl, timeout=LEASE_WAIT)
        except TimeoutError:
            return None  # a (paused) holder's fenced transaction still holds the row: not free yet
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        if row is not None:
            return Lease(row[0], row[1], int(row[2]), row[3])
        now = await self._fetchrow(Q.get_lease, name)
        if now is not None and now[1] == holder and now[4]:
            return Lease(now[0], now[1], int(now[2]), now[3])
        return None

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        row = await self._fetchrow(Q.renew_lease, lease.name, lease.holder, lease.token, ttl)
        return None if row is None else Lease(row[0], row[1], int(row[2]), row[3])

    async def release_lease(self, lease: Lease) -> None:
        await self._fetch(Q.release_lease, lease.name, lease.holder, lease.token)

    async def get_lease(self, name: str) -> Lease | None:
        row = await self._fetchrow(Q.get_lease, name)
        if row is None or row[1] is None:
            return None
        return Lease(row[0], row[1], int(row[2]), row[3])

    async def claim_runs(self, replica: str, limit: int = 1000, mine: bool = False) -> list[Run]:
        try:
            async with self._p().acquire() as conn, conn.transaction():
                ids = [r[0] for r in await conn.fetch(Q.claim_runs, replica, limit, mine)]
                rows = (
                    await conn.fetch(
                        Q.select_runs + " WHERE id = ANY($1::text[]) ORDER BY created_at, id", ids
                    )
                    if ids
                    else []
                )
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        return [_run_from_row(r) for r in rows]

    async def run_owners(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        found = {r[0]: r[1] for r in await self._fetch(Q.run_owners, list(run_ids))}
        return {rid: found.get(rid) for rid in run_ids}

    @staticmethod
    async def _record(
        conn: asyncpg.Connection, batch: list[Intake], events: list[Event], record_args: list[Any]
    ) -> list[Recorded]:
        """The runs and the events in one statement; then, only if a run key was taken, the
        duplicates' events marked and the runs that exist read (same transaction)."""
        rows = await conn.fetch(Q.record_batch, *record_args)
        inserted = {(r[0], r[1], r[2]) for r in rows}
        # A run is ours if the row at its key came from our event; otherwise read the run that exists.
        missing = [
            i.run
            for i in batch
            if i.run is not None and (i.run.id, i.run.key, i.run.event_id) not in inserted
        ]
        if not missing:
            return [Recorded(event=e, run=i.run) for i, e in zip(batch, events, strict=True)]
        existing: dict[str, Run] = {}
        for row in await conn.fetch(
            Q.select_runs + " WHERE key = ANY($1::text[]) OR id = ANY($2::text[])",
            [r.key for r in missing],
            [r.id for r in missing],
        ):
            there = _run_from_row(row)
            existing[f"k:{there.key}"] = there
            existing[f"i:{there.id}"] = there
        out: list[Recorded] = []
        marks: list[list[str]] = [[], [], []]
        for intake, event in zip(batch, events, strict=True):
            run: Run | None = intake.run
            if run is not None and (run.id, run.key, run.event_id) not in inserted:
                found = existing.get(f"k:{run.key}") or existing.get(f"i:{run.id}")
                if found is None:  # pragma: no cover - the insert conflicted on one of the two
                    raise StoreError(f"run {run.id} was neither inserted nor found")
                reason = duplicate_reason(found)
                event = event.model_copy(
                    update={"outcome": EventOutcome.duplicate, "run_id": found.id, "reason": reason}
                )
                for col, value in zip(marks, (event.id, found.id, reason), strict=True):
                    col.append(value)
                run = found.model_copy(deep=True)
            out.append(Recorded(event=event, run=run))
        await conn.execute(Q.mark_duplicates, *marks)
        return out

    async def outbox_take(self, sink: str, limit: int) -> list[tuple[int, str]]:
        rows = await self._fetch(Q.take_outbox, sink, limit)
        return [(int(seq), str(doc)) for seq, doc in rows]

    async def outbox_done(self, sink: str, upto: int) -> None:
        await self._fetch(Q.delete_outbox, sink, upto)

    async def outbox_size(self, sink: str) -> int:
        row = await self._fetchrow(Q.count_outbox, sink)
        return 0 if row is None else int(row[0])

    async def get_run(self, run_id: str) -> Run | None:
        row = await self._fetchrow(Q.select_runs + " WHERE id = $1", run_id)
        return None if row is None else _run_from_row(row)

    async def get_run_by_key(self, key: str) -> Run | None:
        row = await self._fetchrow(Q.select_runs + " WHERE key = $1", key)
        return None if row is None else _run_from_row(row)

    async def list_runs(self, query: RunQuery) -> Page[Run]:
        limit = check_limit(query.limit)
        where: list[str] = []
        args: list[Any] = []
        if query.job is not None:
            args.append(query.job)
            where.append(f"job = ${len(args)}")
        if query.states is not None:
            states = [RunState(s) for s in query.states]
            args.append([s.value for s in states])
            where.append(f"state = ANY(${len(args)}::text[])")
            if states and set(states) <= _LISTED_ACTIVE:
                where.append(_ACTIVE_TERM)  # lets the planner use the partial index
        if query.event_id is not None:
            args.append(query.event_id)
            where.append(f"event_id = ${len(args)}")
        if query.trigger is not None:
            args.append(query.trigger)
            where.append(f"trigger = ${len(args)}")
        _time_window(where, args, "created_at", query.since, query.until, query.cursor)
        args.append(limit + 1)
        sql = Q.select_runs + _where(where) + f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
        rows = await self._fetch(sql, *args)
        items = [_run_from_row(r) for r in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        cursor = None if last is None else encode_cursor(to_us(last[9]), last[0])
        return Page(items=items, next_cursor=cursor)

    async def active_runs(self) -> list[Run]:
        rows = await self._fetch(f"{Q.select_runs} WHERE {_ACTIVE_TERM} ORDER BY created_at, id")
        return [_run_from_row(r) for r in rows]

    async def pending_runs(
        self, owner: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Run], tuple[datetime, str] | None]:
        # a range of runs_state_created, this replica's rows only (a run no replica owns is
        # claimed first, `claim_runs`, never taken from here)
        sql = (
            f"{Q.select_runs} WHERE state = 'pending' AND owner = $1 AND (created_at, id) >= ($2, $3)"
            " ORDER BY created_at, id LIMIT $4"
        )
        start = (_ts(after[0]), after[1]) if after else (datetime(1970, 1, 1, tzinfo=UTC), "")
        rows = await self._fetch(sql, owner, *start, limit)
        runs = [_run_from_row(r) for r in rows]
        return runs, read_on(runs, limit)

    async def get_event(self, event_id: str) -> Event | None:
        row = await self._fetchrow(Q.select_events + " WHERE id = $1", event_id)
        return None if row is None else _event_from_row(row)

    async def last_runs(self, jobs: Sequence[str]) -> dict[str, Run]:
        if not jobs:
            return {}
        sql = f"{Q.select_runs} WHERE id IN ({Q.last_run_ids})"
        return {r.job: r for r in (_run_from_row(row) for row in await self._fetch(sql, list(jobs)))}

    async def activity(
        self, since: datetime, bucket: timedelta, buckets: int, events_since: datetime | None = None
    ) -> Activity:
        width = check_buckets(bucket, buckets)
        since = from_us(to_us(since))  # a naive time is UTC, as everywhere in the stores
        states = [s.value for s in RunState]
        runs = await self._fetch(Q.activity_runs, since, timedelta(microseconds=width), buckets, states)
        events = await self._fetch(Q.activity_events, since if events_since is None else _utc(events_since))
        return Activity(
            runs=sorted(ActivityCount(int(b), RunState(s), int(n)) for b, s, n in runs if n),
            events=sorted(SourceCount(str(src), EventOutcome(o), int(n)) for src, o, n in events),
        )

    async def list_events(self, query: EventQuery) -> Page[Event]:
        limit = check_limit(query.limit)
        where: list[str] = []
        args: list[Any] = []
        if query.job is not None:
            args.append(query.job)
            where.append(f"job = ${len(args)}")
        if query.outcomes is not None:
            args.append([EventOutcome(o).value for o in query.outcomes])
            where.append(f"outcome = ANY(${len(args)}::text[])")
        _time_window(where, args, "received_at", query.since, query.until, query.cursor)
        args.append(limit + 1)
        sql = Q.select_events + _where(where) + f" ORDER BY received_at DESC, id DESC LIMIT ${len(args)}"
        rows = await self._fetch(sql, *args)
        items = [_event_from_row(r) for r in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        cursor = None if last is None else encode_cursor(to_us(last[4]), last[0])
        return Page(items=items, next_cursor=cursor)

    async def last_fire(self, job: str, trigger: str) -> datetime | None:
        row = await self._fetchrow(Q.last_fire, job, trigger)
        return None if row is None else _utc(row[0])

    async def last_fires(self) -> dict[tuple[str, str], datetime]:
        return {(job, trigger): _utc(at) for job, trigger, at in await self._fetch(Q.last_fires)}

    async def prune(self, job: str, keep: int, older_than: datetime) -> PruneResult:
        cut = _ts(older_than)
        try:
            async with self._p().acquire() as conn, conn.transaction():
                runs = [r[0] for r in await conn.fetch(Q.prune_runs, job, max(0, keep), cut)]
                status = await conn.execute(Q.prune_events, job, cut)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        return PruneResult(runs=sorted(runs), events=_count(status))

    async def prune_jobs(self, rules: Sequence[PruneRule]) -> PruneResult:
        by_job = {r.job: r for r in rules}  # the last rule of a job counts
        if not by_job:
            return PruneResult()
        jobs = list(by_job)
        keeps = [max(0, by_job[j].keep) for j in jobs]
        cuts = [_ts(by_job[j].older_than) for j in jobs]
        try:
            async with self._p().acquire() as conn:
                # a read first; the write transaction only if it found something
                due = await conn.fetchrow(Q.prune_jobs_runs + " LIMIT 1", jobs, keeps, cuts)
                if due is None:
                    due = await conn.fetchrow(Q.prune_jobs_events + " LIMIT 1", jobs, cuts)
                if due is None:
                    return PruneResult()
                async with conn.transaction():
                    runs = [r[0] for r in await conn.fetch(Q.prune_jobs_runs, jobs, keeps, cuts)]
                    if runs:
                        await conn.execute(Q.delete_runs, runs)
                    events = [r[0] for r in await conn.fetch(Q.prune_jobs_events, jobs, cuts)]
                    if events:
                        await conn.execute(Q.delete_events, events)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._error(exc) from exc
        return PruneResult(runs=sorted(runs), events=len(events))

    # ---- for tests and tools

    async def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement (tests, diagnostics)."""
        return [tuple(r) for r in await self._fetch(sql, *args)]


def _refused(ids: list[str], written: Sequence[Any]) -> list[str]:
    """The ids of a conditional update that were not written (no row came back for them)."""
    done = {r[0] for r in written}
    return [i for i in ids if i not in done]


async def _check_fence(conn: asyncpg.Connection, fence: Fence) -> None:
    """The first statement of a fenced transaction: raise Fenced unless the lease is still held."""
    if await conn.fetchrow(Q.check_fence, fence.lease, fence.replica, fence.token) is None:
        raise _fenced(fence)


def _fenced(fence: Fence) -> Fenced:
    return Fenced(
        f"replica {fence.replica} no longer holds the {fence.lease} lease with token "
        f"{fence.token}: nothing written"
    )


def _claims_slot(intake: Intake) -> bool:
    """Whether `intake` claims a concurrency slot (pgslots.apply_claims decides it, in a transaction)."""
    return intake.slot is not None and intake.run is not None and intake.run.state == RunState.pending


_NO_UPDATES: list[list[Any]] = [[] for _ in range(21)]


def _utc(dt: datetime) -> datetime:
    return from_us(to_us(dt))


def _count(status: str) -> int:
    """The row count of a command status such as `DELETE 3`."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def _time_window(
    where: list[str],
    args: list[Any],
    column: str,
    since: datetime | None,
    until: datetime | None,
    cursor: str | None,
) -> None:
    """`since` inclusive, `until` exclusive; the cursor continues strictly after the last row."""
    if since is not None:
        args.append(_ts(since))
        where.append(f"{column} >= ${len(args)}")
    if until is not None:
        args.append(_ts(until))
        where.append(f"{column} < ${len(args)}")
    if cursor is not None:
        us, row_id = decode_cursor(cursor)
        try:
            after = from_us(us)
        except (OverflowError, ValueError):
            raise InvalidCursorError(
                f"invalid cursor {cursor!r}: pass a next_cursor of a previous page"
            ) from None
        args.extend((after, row_id))
        where.append(f"({column}, id) < (${len(args) - 1}, ${len(args)})")


def env_auto_migrate() -> bool:
    return os.environ.get("JOBWIRE_DB_AUTO_MIGRATE", "").strip().lower() in ("1", "true", "yes", "on")
