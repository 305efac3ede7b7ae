"""The `postgres` source (seed 001): rows of a table in, one recorded event (and run) per row,
the row marked only after its event is committed (asyncpg; the `postgres` pip extra).

One connection per (database, table, channel), serving every trigger on that table. It LISTENs on
the channel, then selects the waiting rows — right after every (re)connect, whenever a
notification arrives, and every `safety_interval` without one — so a notification lost while
disconnected loses no row. Notifications only set a wake-up flag: a burst of 1,000 inserts makes
a few selects, not 1,000 (one claim loop runs until a select returns fewer than `batch` rows).

A claim is one transaction: `SELECT * … WHERE (<condition>) ORDER BY <id> LIMIT <batch> FOR UPDATE
SKIP LOCKED` (other jobwire processes skip the locked rows, so each row is taken by one), the rows
handed to `intake.submit` as one call, and only after it returned each row's status (and run id,
and the reason when no run was made) is written and the transaction committed:

| admission | row status | error column |
|---|---|---|
| `run`, `duplicate` | `scheduled` (or the run's state when the run already existed and is past pending) | — |
| `invalid` | `failed` | the reason |
| `paused`, `overlap`, `filtered` | `skipped` | the reason |
| `IntakeUnavailable` | unchanged (`pending`): rolled back, tried again after a backoff | — |

A crash or a lost connection between the submit and the commit rolls the claim back: the row is
selected again and makes a `duplicate` event pointing at the same run (the event key is table +
primary key, + the version column when there is one), never a second run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

from jobwire.model import Admission, EventOutcome, Incoming, RunState, event_run_key, run_id_for
from jobwire.redact import mask_url
from jobwire.sources.base import Binding, Intake, IntakeUnavailable, Source
from jobwire.sources.postgres.spec import PostgresSettings, PostgresTrigger
from jobwire.sources.postgres.sql import SOURCE_APPLICATION, Columns, claim_sql, columns, mark_args, mark_sql

log = structlog.get_logger(__name__)

SCHEDULED, SKIPPED, FAILED = "scheduled", "skipped", "failed"
ROW_STATUS: dict[RunState, str] = {
    RunState.queued: SCHEDULED,
    RunState.pending: SCHEDULED,
    RunState.running: "running",
    RunState.succeeded: "succeeded",
    RunState.failed: FAILED,
    RunState.timed_out: FAILED,
    RunState.cancelled: FAILED,
    RunState.interrupted: FAILED,
}
"""A run's state as the row's status (the status sink writes the same words)."""

APPLICATION_NAME = SOURCE_APPLICATION
"""The listener's `application_name` (`pg_stat_activity`)."""

RETRY_FIRST, RETRY_MAX = 0.2, 10.0
"""Backoff (seconds) before claiming again after `IntakeUnavailable`."""


class ClaimBook:
    """Run ids whose rows are claimed but not yet committed, per (dsn, table), in this process.
    The status sink waits on them: a run's `running` can be published before the claim that names
    the row's run id is committed, and an update then would match no row."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], dict[str, asyncio.Event]] = {}

    def open(self, key: tuple[str, str], run_ids: Sequence[str]) -> list[asyncio.Event]:
        book = self._open.setdefault(key, {})
        out = []
        for rid in run_ids:
            ev = book.setdefault(rid, asyncio.Event())
            out.append(ev)
        return out

    def close(self, key: tuple[str, str], run_ids: Sequence[str]) -> None:
        book = self._open.get(key, {})
        for rid in run_ids:
            ev = book.pop(rid, None)
            if ev is not None:
                ev.set()
        if not book:
            self._open.pop(key, None)

    def pending(self, key: tuple[str, str], run_id: str) -> asyncio.Event | None:
        return self._open.get(key, {}).get(run_id)


CLAIMS = ClaimBook()


@dataclass(frozen=True, slots=True)
class StatusTarget:
    """Where the status sink writes a run's progress: `UPDATE <table> SET <status> … WHERE <run_id> = …`."""

    dsn: str
    table: str
    status: str
    run_id: str
    error: str | None


class Routes:
    """Which tables a run's status goes to, per job: each postgres source registers its bindings
    that have a run id column while it runs (from its first start until it is stopped: a lost
    connection keeps them), and the status sink reads them for every document. Jobs None: any
    job (the table-wide intake)."""

    def __init__(self) -> None:
        self._by_source: dict[object, dict[StatusTarget, frozenset[str] | None]] = {}

    def register(self, source: object, routes: dict[StatusTarget, frozenset[str] | None]) -> None:
        self._by_source[source] = routes

    def unregister(self, source: object) -> None:
        self._by_source.pop(source, None)

    def for_job(self, job: str) -> list[StatusTarget]:
        out: dict[StatusTarget, None] = {}
        for routes in self._by_source.values():
            for target, jobs in routes.items():
                if jobs is None or job in jobs:
                    out[target] = None
        return list(out)


ROUTES = Routes()


def routes_for(
    bindings: Sequence[Binding], settings: PostgresSettings
) -> dict[StatusTarget, frozenset[str] | None]:
    """The status targets of `bindings` (those with a run id column) and the jobs each serves."""
    out: dict[StatusTarget, frozenset[str] | None] = {}
    for b in bindings:
        t: PostgresTrigger = b.trigger
        dsn = t.dsn or settings.dsn
        if not dsn or t.run_id_column is None:
            continue
        target = StatusTarget(dsn, t.table, t.status_column, t.run_id_column, t.error_column)
        jobs = out.get(target, frozenset())
        out[target] = None if jobs is None or b.job is None else jobs | {b.job}
    return out


def json_safe(value: Any, depth: int = 0) -> Any:
    """A column value as JSON: dates and times as ISO 8601 strings, Decimal and UUID as strings,
    bytes as hex, intervals as seconds; arrays and json(b) values recursively."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if depth > 32:
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):  # pragma: no cover
        return str(value)
    return str(value)


def event_key(c: Columns, row: Any) -> str:
    """`<table>:<primary key>` (or `<table>:<key column>`), `@<version>` with a version column."""
    key = f"{c.table}:{row[c.key or c.id]}"
    if c.version is not None:
        key += f"@{row[c.version]}"
    return key


def build(bindings: Sequence[Binding], settings: PostgresSettings | None) -> list[Source]:
    """One source per (dsn, table, channel). Job triggers come before the settings' table-wide
    binding, so a row typed for a job with its own trigger is taken by that trigger."""
    settings = settings or PostgresSettings()
    groups: dict[tuple[str, str, str], list[Binding]] = {}
    for b in bindings:
        t: PostgresTrigger = b.trigger
        dsn = t.dsn or settings.dsn
        if not dsn:
            raise ValueError(
                f"postgres trigger {b.trigger_id!r} of job {b.job!r}: no database "
                "(set `dsn:` on the trigger or JOBWIRE_POSTGRES_DSN)"
            )
        if b.job is None and t.type_column is None:
            raise ValueError("the table-wide postgres intake needs a type column naming each row's job")
        groups.setdefault((dsn, t.table, t.channel), []).append(b)
    out: list[Source] = []
    for (dsn, table, channel), group in sorted(groups.items()):
        group.sort(key=lambda b: (b.job is None, b.job or "", b.trigger_id))
        digest = hashlib.sha256(f"{dsn}\0{channel}".encode()).hexdigest()[:8]
        out.append(PostgresSource(f"postgres-{table}-{digest}", group, settings, dsn=dsn, channel=channel))
    return out


class PostgresSource(Source):
    kind = "postgres"

    def __init__(
        self, name: str, bindings: Sequence[Binding], settings: PostgresSettings, *, dsn: str, channel: str
    ) -> None:
        super().__init__(name, bindings, settings)
        self.dsn = dsn
        self.channel = channel
        self.table = self.bindings[0].trigger.table
        self.interval = min(b.trigger.safety_interval for b in self.bindings).total_seconds()
        self.health.target = f"{mask_url(dsn)} table {self.table} channel {channel}"
        self.selects = 0
        """Claim selects made (a notification burst must not make one each)."""
        self.notifications = 0
        self._plans = [
            (b, columns(b.trigger), b.job is not None and b.trigger.type_column is not None)
            for b in self.bindings
        ]
        self._routes = routes_for(self.bindings, settings)

    async def run(self, intake: Intake) -> None:
        wake = asyncio.Event()
        lost: list[str] = []
        ROUTES.register(self, self._routes)
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
            )
        except asyncio.CancelledError:
            ROUTES.unregister(self)
            raise
        except Exception as exc:
            self.health.down(f"cannot connect: {type(exc).__name__}: {exc}")
            raise
        try:
            own_pid = conn.get_server_pid()

            def on_notify(_c: Any, pid: int, _channel: str, _payload: str) -> None:
                if pid != own_pid:  # our own status updates wake nobody here
                    self.notifications += 1
                    wake.set()

            def on_lost(_c: Any) -> None:
                lost.append("connection closed")
                wake.set()

            for kind in ("json", "jsonb"):
                await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            conn.add_termination_listener(on_lost)
            await conn.add_listener(self.channel, on_notify)  # LISTEN "<channel>"
            self.health.up()
            log.info("postgres source listening", source=self.name, target=self.health.target)
            wake.set()  # select right after every (re)connect: notifications may have been lost
            while True:
                if not wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.interval)
                wake.clear()
                if lost or conn.is_closed():
                    raise ConnectionError(f"postgres {self.health.target}: connection lost")
                await self._drain(conn, intake, lost)
        except asyncio.CancelledError:
            self.health.down("stopped")
            ROUTES.unregister(self)  # stopped (removed, changed, jobwire stopping): no more writes
            raise
        except Exception as exc:
            self.health.down(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            with contextlib.suppress(Exception):
                if not conn.is_closed():
                    conn.terminate()

    async def _drain(self, conn: asyncpg.Connection, intake: Intake, lost: list[str]) -> None:
        """Claim until every binding's select comes back short of a full batch."""
        delay = RETRY_FIRST
        while True:
            full = False
            for binding, cols, by_type in self._plans:
                if lost:
                    raise ConnectionError(f"postgres {self.health.target}: connection lost")
                try:
                    n = await self._claim(conn, intake, binding, cols, by_type)
                except IntakeUnavailable as exc:
                    log.warning("postgres rows not recorded; retrying", source=self.name, error=str(exc))
                    self.health.last_error = f"intake unavailable: {exc}"
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX, self.interval)
                    full = True
                    continue
                if self.health.last_error is not None and self.health.connected:
                    self.health.last_error = None  # the intake is back
                full = full or n >= binding.trigger.batch
            if not full:
                return

    async def _claim(
        self, conn: asyncpg.Connection, intake: Intake, binding: Binding, c: Columns, by_type: bool
    ) -> int:
        trigger: PostgresTrigger = binding.trigger
        args: list[Any] = [trigger.batch]
        if by_type:
            args.append(trigger.type_value or binding.job)
        book_key = (self.dsn, self.table)
        run_ids: list[str] = []
        cancelled = False
        try:
            async with conn.transaction():
                try:
                    self.selects += 1
                    rows = await conn.fetch(claim_sql(c, by_type), *args)
                    if not rows:
                        return 0
                    incomings = [self._incoming(binding, c, row) for row in rows]
                    run_ids = [
                        run_id_for(event_run_key(inc.job, inc.trigger, inc.event_key))
                        for inc in incomings
                        if inc.job and inc.event_key
                    ]
                    CLAIMS.open(book_key, run_ids)
                    admissions = await intake.submit(incomings)
                    marks = [
                        mark_args(c, row[c.id], *_row_outcome(adm))
                        for row, adm in zip(rows, admissions, strict=True)
                    ]
                    await conn.executemany(mark_sql(c), marks)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
        except Exception as exc:
            if cancelled:  # the rollback failed on a dead connection: the stop must stay a stop
                raise asyncio.CancelledError from exc  # (else the source is restarted, and a stop hangs)
            raise
        finally:
            CLAIMS.close(book_key, run_ids)
        self.health.received(len(rows))
        self.health.dead_lettered += sum(1 for a in admissions if a.event.outcome == EventOutcome.invalid)
        return len(rows)

    def _incoming(self, binding: Binding, c: Columns, row: Any) -> Incoming:
        problem = None
        if c.payload is None:
            data: Any = {k: json_safe(v) for k, v in row.items()}
        else:
            data, problem = payload_of(row[c.payload], c.payload)
        job = binding.job
        if job is None and c.type is not None:
            named = row[c.type]
            job = None if named is None or named == "" else str(named)
        return Incoming(
            job=job,
            trigger=binding.trigger_id,
            source="postgres",
            payload=data,
            event_key=event_key(c, row),
            problem=problem,
        )


def payload_of(value: Any, column: str) -> tuple[Any, str | None]:
    """The parameters a payload column holds, and why they cannot be read (None when they can):
    json/jsonb arrive decoded; text (or bytea) must hold JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode()
        except UnicodeDecodeError:
            return bytes(value).hex(), f"column {column!r} is not UTF-8 text"
    if isinstance(value, str):
        try:
            return json.loads(value), None
        except ValueError as exc:
            return value, f"column {column!r} is not valid JSON: {exc}"
    return json_safe(value), None


def _row_outcome(adm: Admission) -> tuple[str, str | None, str | None]:
    """(status, run id, error) to write on the row for this admission."""
    ev = adm.event
    if ev.outcome in (EventOutcome.run, EventOutcome.duplicate):
        run_id = adm.run.id if adm.run is not None else ev.run_id
        status = ROW_STATUS.get(adm.run.state, SCHEDULED) if adm.run is not None else SCHEDULED
        return status, run_id, None
    if ev.outcome == EventOutcome.invalid:
        return FAILED, None, ev.reason or "invalid event"
    return SKIPPED, ev.run_id, ev.reason or ev.outcome.value
