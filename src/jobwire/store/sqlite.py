"""SQLite store: the embedded default. One file, one scheduler.

The stdlib `sqlite3` module is driven from ONE dedicated thread. Each store method is one hop to
that thread, running a plain synchronous function that does all of its statements in one
transaction (a hop per method, not per statement as with aiosqlite). WAL mode; `synchronous`
FULL by default so a recorded run survives power loss, not just a crash.

A second jobwire process on the same file would fire every schedule twice, so `open()` takes an
exclusive `flock` on `<db>.lock` and fails fast with `StoreLocked` naming the process that holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic_core import to_json

from jobwire.model import ACTIVE_STATES, Event, EventOutcome, Job, Run, RunState, utcnow
from jobwire.store.base import (
    Activity,
    ActivityCount,
    EventQuery,
    Fence,
    Intake,
    OutboxRow,
    Page,
    PruneResult,
    PruneRule,
    Recorded,
    RunQuery,
    SourceCount,
    Store,
    StoredJob,
    StoreError,
    StoreLocked,
    known_if_same,
    read_on,
)
from jobwire.store.onethread import OneThread
from jobwire.store.queries import (
    Queries,
    check_buckets,
    check_limit,
    decode_cursor,
    encode_cursor,
    from_us,
    load_migrations,
    opt_dt,
    to_us,
)

T = TypeVar("T")


def _null(value: None) -> None:
    return value


# CPython 3.11's sqlite3 binds only exact int, float, str and bytearray parameters directly; any
# other value — None too — is first looked up as an adaptable object, and that lookup raises (and
# clears) an AttributeError, message formatted, for every None bound. A run's row binds ~10 Nones
# (its unset times, exit code, error…), so a registered adapter, found in one dict lookup, binds a
# None for 0.2 µs (Debian's 3.11) to 0.7 µs (a build without PGO) less. It returns the None as is:
# bound as NULL exactly as before (`tests/unit/test_sqlite_null.py`).
sqlite3.register_adapter(type(None), _null)

Q = Queries("sqlite")
UPSERT_JOBS = Q.upsert_job[: Q.upsert_job.rindex("RETURNING")]
"""`upsert_job` without its RETURNING, for `executemany` (the rows it would return are known, and
copying each definition back cost 0.3 s per 100,000 jobs)."""

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT_MS = 5000
HOLD_ITEMS = (4, 64)
"""A group commit of this many items (intakes, updates, outbox rows), bounds included, is held
(`_w_held`). Under 4 the loop has little else to do, so nothing contends for the GIL, and the
hold would only add a wake-up of the loop's thread to the commit's path (a lone trigger's 201)."""
HOLD_MAX = 0.005
"""Seconds the event loop waits at most for a held commit's statements (then it awaits them)."""

RUN_COLUMNS = (
    "id", "key", "job", "trigger", "event_id", "state", "attempt", "params", "concurrency_key",
    "created_at", "scheduled_at", "not_before", "started_at", "finished_at", "exit_code", "http_status",
    "error", "target_ref", "target_status", "history", "input_location", "environment",
)  # fmt: skip
EVENT_COLUMNS = (
    "id", "job", "trigger", "source", "received_at", "scheduled_at", "payload", "outcome", "run_id",
    "reason", "input_location",
)  # fmt: skip
_ACTIVE_TERM = "state IN ('queued', 'pending', 'running')"
_LISTED_ACTIVE = frozenset({RunState.queued, *ACTIVE_STATES})
# The runs in active states (`active_runs`, and `list_runs` with or without a job filter, not for
# one event's runs: runs_event finds those), read through their states' ranges of
# runs_state_created. The planner's statistics give every state the same share of the rows, so it
# would rather walk all runs (or all of a job's runs) in time order — 1,000,000 runs: the whole
# table — than sort the few active ones; before migration 0004 a partial index of the active runs
# made the choice.
_ACTIVE_RUNS = Q.select_runs + " INDEXED BY runs_state_created"  # select_runs ends "FROM runs"
ACTIVE_RUNS_SQL = f"{_ACTIVE_RUNS} WHERE {_ACTIVE_TERM} ORDER BY created_at, id"
"""`active_runs`: every run in an active state, oldest first."""
PENDING_RUNS_SQL = (
    f"{_ACTIVE_RUNS} WHERE state = 'pending' AND (created_at, id) >= (?, ?) ORDER BY created_at, id LIMIT ?"
)
"""`pending_runs`: a range of runs_state_created from a (created_at, id) on."""
_STATE_LIST = json.dumps([s.value for s in RunState])


def runs_query(query: RunQuery, limit: int) -> tuple[str, list[Any]]:
    """`list_runs`' statement and its arguments: one page (and one row more) newest first."""
    where: list[str] = []
    args: list[Any] = []
    select = Q.select_runs
    if query.job is not None:
        where.append("job = ?")
        args.append(query.job)
    if query.states is not None:
        states = [RunState(s) for s in query.states]
        where.append(f"state IN ({', '.join('?' * len(states))})")
        args.extend(s.value for s in states)
        if states and set(states) <= _LISTED_ACTIVE and query.event_id is None:
            select = _ACTIVE_RUNS
    if query.event_id is not None:
        where.append("event_id = ?")
        args.append(query.event_id)
    if query.trigger is not None:
        where.append("trigger = ?")
        args.append(query.trigger)
    _time_window(where, args, "created_at", query.since, query.until, query.cursor)
    args.append(limit + 1)
    return select + _where(where) + " ORDER BY created_at DESC, id DESC LIMIT ?", args


# --------------------------------------------------------------------------- url, lock


def path_from_url(url: str) -> Path:
    """`sqlite:///relative/path.db` → `relative/path.db`; `sqlite:////abs/path.db` → `/abs/path.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise StoreError(
            f"invalid SQLite URL {url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    rest = url[len(prefix) :].split("?", 1)[0]
    if rest == ":memory:":
        raise StoreError("sqlite:///:memory: is not supported (one scheduler per file); use memory://")
    return Path(rest).expanduser()


def _full_disk_hint(path: Path) -> str:
    """What to do when the disk is full: SQLite says only "disk I/O error" when it cannot make its
    WAL files at open."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    if free >= 1024 * 1024:
        return ""
    return f" (the disk holding it is full: free space in {path.parent}, JOBWIRE_DATA_DIR, and start again)"


def _take_lock(lock_path: Path, db_path: Path) -> int:
    """Exclusive non-blocking flock on the lock file; the fd stays open while the store is open."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        pid = holder if holder.isdigit() else "unknown"
        who = (
            f"another jobwire store in this process (pid {pid})"
            if pid == str(os.getpid())
            else f"another jobwire process (pid {pid})"
        )
        raise StoreLocked(
            f"{who} is using {db_path}; stop it or set JOBWIRE_DATA_DIR to another folder. A SQLite "
            "file serves one jobwire: to run several replicas, use PostgreSQL "
            "(JOBWIRE_DATABASE_URL=postgresql://…, see docs/replicas.md)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# --------------------------------------------------------------------------- migrations


def _statements(script: str) -> list[str]:
    """Split a migration script into complete statements (triggers' BEGIN…END kept whole)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    rest = "\n".join(ln for ln in buf.splitlines() if not ln.strip().startswith("--")).strip()
    if rest:
        raise StoreError(f"migration ends with an incomplete statement: {rest[:80]!r}")
    return out


def schema_version(conn: sqlite3.Connection) -> int:
    """The version the database is at (0 for an empty one)."""
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def latest_version() -> int:
    return len(load_migrations("sqlite"))


def migrate(conn: sqlite3.Connection, target: int | None = None) -> list[int]:
    """Apply the migrations after the database's version up to `target` (default: all), each in
    its own transaction with its `schema_version` row. Returns the versions applied."""
    migrations = load_migrations("sqlite")
    latest = len(migrations)
    target = latest if target is None else target
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    current = schema_version(conn)
    if current > latest:
        raise StoreError(
            f"the database schema is at version {current}, newer than this jobwire knows ({latest}); "
            "upgrade jobwire or point it at another database"
        )
    applied: list[int] = []
    for version, name, sql in migrations:
        if version <= current or version > target:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) >= version:  # applied meanwhile (cannot happen under the lock)
                conn.execute("ROLLBACK")
                continue
            for stmt in _statements(sql):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, to_us(utcnow())),
            )
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"migration {version:04d}_{name}.sql failed: {exc}") from exc
            raise
        applied.append(version)
    return applied


WAL_AUTOCHECKPOINT = 10_000
"""Pages (4 KiB) the WAL may hold before a commit checkpoints it into the database file (SQLite's
default: 1,000). The checkpoint runs inside the committing transaction, on the store's one writer
thread, so every write behind it waits; ten times fewer (and each less than ten times longer: hot
pages are copied once, not once per thousand pages) — 16 producers of HTTP runs went from 2,571–2,994
to 2,734–3,243 runs/s, one producer from 1,223–1,363 to 1,395–1,469 /s (six alternating runs each,
docs/performance.md). The WAL file may grow to ~40 MB between checkpoints."""


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection with jobwire's settings: autocommit (explicit BEGIN), WAL, foreign keys."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True, cached_statements=256)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: could not switch to WAL journal mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -16384")  # KiB: 16 MiB of page cache (default 2 MiB)
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")
    except BaseException:
        conn.close()
        raise
    return conn


# --------------------------------------------------------------------------- row mapping


def _run_values(run: Run) -> tuple[Any, ...]:
    # Twice per run (its intake, its end), on the caller's thread (`commit` builds the rows before
    # the hop): the fields read from the instance's dict, and `to_us` / `opt_us` / `_json` written
    # out (18 Python-level calls a run fewer); an empty object's JSON is "{}" without the serializer.
    d = run.__dict__
    scheduled, not_before, started, finished, error = (
        d["scheduled_at"], d["not_before"], d["started_at"], d["finished_at"], d["error"]
    )
    params, target_status = d["params"], d["target_status"]
    return (
        d["id"],
        d["key"],
        d["job"],
        d["trigger"],
        d["event_id"],
        # `_value_`, not the `value` property (two Python-level calls), on a per-run path
        d["state"]._value_,
        d["attempt"],
        to_json(params).decode() if params else "{}",  # most runs: no parameters, no target status
        d["concurrency_key"],
        to_us(d["created_at"]),
        None if scheduled is None else to_us(scheduled),
        None if not_before is None else to_us(not_before),
        None if started is None else to_us(started),
        None if finished is None else to_us(finished),
        d["exit_code"],
        d["http_status"],
        None if error is None else to_json(error).decode(),
        d["target_ref"],
        to_json(target_status).decode() if target_status else "{}",
        to_json(d["history"]).decode(),
        d["input_location"],
        d["environment"],
    )


def _update(conn: sqlite3.Connection, values: list[tuple[Any, ...]]) -> list[str]:
    """The conditional update of runs (`update_run`); the ids of those not written. Only when
    fewer rows changed than were given are the refused ones looked up."""
    if conn.executemany(Q.update_run, values).rowcount == len(values):
        return []
    ids = [v[0] for v in values]
    marks = ", ".join("?" * len(ids))
    sql = f"SELECT id, state FROM runs WHERE id IN ({marks})"  # noqa: S608 - placeholders only
    stored = dict(conn.execute(sql, ids).fetchall())
    return [v[0] for v in values if stored.get(v[0]) != v[4]]


def _run_update_values(run: Run) -> tuple[Any, ...]:
    v = _run_values(run)
    return (v[0], *v[2:])  # id, then everything after key


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
            "created_at": from_us(row[9]),
            "scheduled_at": opt_dt(row[10]),
            "not_before": opt_dt(row[11]),
            "started_at": opt_dt(row[12]),
            "finished_at": opt_dt(row[13]),
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


def _event_values(event: Event) -> tuple[Any, ...]:
    # once per event, on the store thread: as `_run_values`, the dict read and the helpers written out
    d = event.__dict__
    scheduled, payload = d["scheduled_at"], d["payload"]
    return (
        d["id"],
        d["job"],
        d["trigger"],
        d["source"],
        to_us(d["received_at"]),
        None if scheduled is None else to_us(scheduled),
        None if payload is None else to_json(payload).decode(),
        d["outcome"]._value_,
        d["run_id"],
        d["reason"],
        d["input_location"],
    )


def _event_from_row(row: Sequence[Any]) -> Event:
    return Event.model_validate(
        {
            "id": row[0],
            "job": row[1],
            "trigger": row[2],
            "source": row[3],
            "received_at": from_us(row[4]),
            "scheduled_at": opt_dt(row[5]),
            "payload": None if row[6] is None else json.loads(row[6]),
            "outcome": row[7],
            "run_id": row[8],
            "reason": row[9],
            "input_location": row[10],
        }
    )


def _job_from_row(row: Sequence[Any]) -> StoredJob:
    return StoredJob(
        job=Job.model_validate_json(row[1]), origin=row[2], paused=bool(row[3]), updated_at=from_us(row[4])
    )


def duplicate_reason(existing: Run) -> str:
    return f"run key already has run {existing.id}"


# --------------------------------------------------------------------------- the store


class SQLiteStore(Store):
    def __init__(
        self, url: str, *, synchronous: str = "FULL", busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> None:
        self.url = url
        self.path = path_from_url(url)
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            raise StoreError(
                f"sqlite synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.synchronous = sync
        self.busy_timeout_ms = busy_timeout_ms
        self._thread: OneThread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._queued = 0
        """Calls handed to the store thread and not done yet (`_w_held` waits only when none are)."""

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # ---- the one thread

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._submit(fn, *args)

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Hand `fn` to the store thread, counting it in `_queued` until it is done."""
        if self._thread is None or self._conn is None:
            raise StoreError(f"{self!r} is not open: call open() first")
        fut = self._thread.submit(fn, *args)
        self._queued += 1
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _: asyncio.Future[Any]) -> None:
        self._queued -= 1

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in one write transaction (on the store thread)."""
        return self._write_held(None, fn, *args)

    def _write_held(self, held: threading.Lock | None, fn: Callable[..., T], *args: Any) -> T:
        """`_write`, releasing `held` (if given) once only the COMMIT (its fsync) is left, or the
        write failed before it."""
        conn = self._conn
        assert conn is not None
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = fn(conn, *args)
            finally:
                if held is not None:
                    held.release()
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise
        return result

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in one read transaction: a consistent snapshot."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    async def _w(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._write, fn, *args)

    async def _w_held(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """`_w` for a group commit: while the store thread runs the statements, the event loop's
        thread waits for it (holding nothing: the GIL is free), then awaits the COMMIT as usual.

        Why: the store thread gives up the GIL at every SQLite step and must take it back after
        each; with the loop busy on the other thread, each take-back waits for the loop to let go
        and is a futex sleep and wake-up on both sides — measured under 16 producers, ~25 per
        commit of 8 runs, and this VM makes every cross-CPU wake-up costly. Waiting out the
        statements (~0.1–0.5 ms for a small batch) leaves the store thread the GIL to itself until
        its fsync, where it needs none. Only when nothing else is queued on the store thread (the
        loop would wait for that work too), for a batch within `HOLD_ITEMS`, and never longer
        than `HOLD_MAX` seconds (then it just awaits)."""
        if self._queued or not HOLD_ITEMS[0] <= size <= HOLD_ITEMS[1]:
            return await self._call(self._write, fn, *args)
        held = threading.Lock()
        held.acquire()
        fut: asyncio.Future[T] = self._submit(self._write_held, held, fn, *args)
        held.acquire(timeout=HOLD_MAX)
        return await fut

    async def _r(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._read, fn, *args)

    # ---- lifecycle

    async def open(self) -> None:
        if self._thread is not None:
            raise StoreError(f"{self!r} is already open")
        thread = OneThread("jobwire-sqlite")
        thread.start()
        try:
            await thread.submit(self._open_sync)
        except BaseException:
            await thread.stop()
            raise
        self._thread = thread

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for {self.path}: {exc}") from exc
        fd = _take_lock(self.lock_path, self.path.absolute())
        try:
            conn = connect(self.path, self.synchronous)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            try:
                migrate(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            self._release(fd)
            raise StoreError(f"cannot open {self.path}: {exc}{_full_disk_hint(self.path)}") from exc
        except BaseException:
            self._release(fd)
            raise
        self._conn, self._lock_fd = conn, fd

    @staticmethod
    def _release(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    async def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        try:
            await thread.submit(self._close_sync)
        finally:
            self._thread = None
            await thread.stop()

    def _close_sync(self) -> None:
        conn, fd = self._conn, self._lock_fd
        self._conn = self._lock_fd = None
        try:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA optimize")
                conn.close()
        finally:
            if fd is not None:
                self._release(fd)

    # ---- jobs

    async def save_job(self, job: Job, origin: str) -> StoredJob:
        params = {
            "name": job.name,
            "definition": job.model_dump_json(),
            "origin": origin,
            "paused": int(job.paused),
            "updated_at": to_us(utcnow()),
        }

        def op(conn: sqlite3.Connection) -> StoredJob:
            row = conn.execute(Q.upsert_job, params).fetchone()
            return StoredJob(job=job, origin=row[2], paused=bool(row[3]), updated_at=from_us(row[4]))

        return await self._w(op)

    async def save_jobs(self, jobs: Sequence[tuple[Job, str]]) -> list[StoredJob]:
        now = to_us(utcnow())
        params = [
            {
                "name": job.name,
                "definition": job.model_dump_json(),
                "origin": origin,
                "paused": int(job.paused),
                "updated_at": now,
            }
            for job, origin in jobs
        ]

        at = from_us(now)

        def op(conn: sqlite3.Connection) -> list[StoredJob]:
            # one executemany, not a statement and a fetch per job (100,000 jobs: 3.4 → 1.9 s of CPU)
            paused = {row[0] for row in conn.execute(Q.paused_jobs)}
            conn.executemany(UPSERT_JOBS, params)
            return [
                StoredJob(job=job, origin=origin, paused=job.paused or job.name in paused, updated_at=at)
                for job, origin in jobs
            ]

        return await self._w(op) if jobs else []

    async def list_jobs_reusing(self, known: Mapping[str, Job]) -> list[StoredJob]:
        def op(conn: sqlite3.Connection) -> list[StoredJob]:
            out = []
            for row in conn.execute(Q.list_jobs):  # row by row: 100,000 definitions' text never all at once
                job = known_if_same(known, row[0], row[1])
                if job is not None:
                    at = from_us(row[4])
                    out.append(StoredJob(job=job, origin=row[2], paused=bool(row[3]), updated_at=at))
                else:
                    out.append(_job_from_row(row))
            return out

        return await self._r(op)

    async def get_job(self, name: str) -> StoredJob | None:
        row = await self._r(lambda c: c.execute(Q.get_job, {"name": name}).fetchone())
        return None if row is None else _job_from_row(row)

    async def list_jobs(self) -> list[StoredJob]:
        rows = await self._r(lambda c: c.execute(Q.list_jobs).fetchall())
        return [_job_from_row(r) for r in rows]

    async def delete_job(self, name: str) -> bool:
        count: int = await self._w(lambda c: c.execute(Q.delete_job, {"name": name}).rowcount)
        return count > 0

    async def delete_jobs(self, names: Sequence[str]) -> None:
        params = [{"name": name} for name in names]
        if params:
            await self._w(lambda c: c.executemany(Q.delete_job, params))

    async def set_paused(self, name: str, paused: bool) -> StoredJob | None:
        params = {"name": name, "paused": int(paused), "updated_at": to_us(utcnow())}
        row = await self._w(lambda c: c.execute(Q.set_paused, params).fetchone())
        return None if row is None else _job_from_row(row)

    # ---- events and runs

    async def record(self, batch: list[Intake]) -> list[Recorded]:
        return await self.commit(batch, []) if batch else []

    @staticmethod
    def _record_sync(
        conn: sqlite3.Connection, batch: list[Intake], runs: list[tuple[Run, tuple[Any, ...]]]
    ) -> list[Recorded]:
        inserted = conn.executemany(Q.insert_run, [v for _, v in runs]).rowcount if runs else 0
        all_new = inserted == len(runs)
        out: list[Recorded] = []
        event_rows: list[tuple[Any, ...]] = []
        for intake in batch:
            event, run = intake.event, intake.run
            if run is not None:
                new = all_new
                if not new:
                    # Some run key repeated: the run is ours if the row at its key came from our event.
                    row = conn.execute(Q.run_identity_by_key, (run.key,)).fetchone()
                    new = row is not None and row[0] == run.id and row[1] == run.event_id
                if new:
                    if event.run_id != run.id:
                        event = event.model_copy(update={"run_id": run.id})
                else:
                    existing = _existing_run(conn, run)
                    event = event.model_copy(
                        update={
                            "outcome": EventOutcome.duplicate,
                            "run_id": existing.id,
                            "reason": duplicate_reason(existing),
                        }
                    )
                    run = existing
            event_rows.append(_event_values(event))
            out.append(Recorded(event=event, run=run))
        try:
            conn.executemany(Q.insert_event, event_rows)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"cannot record the batch: {exc} (event ids must be unique)") from exc
        return out

    async def update_runs(self, runs: list[Run]) -> list[str]:
        if not runs:
            return []
        values = [_run_update_values(r) for r in runs]
        return await self._w(lambda conn: _update(conn, values))

    def unavailable(self, exc: BaseException) -> bool:
        # sqlite3 errors arrive wrapped in StoreError (`_write`). OperationalError (full disk, I/O
        # error, locked, read-only) or a bare DatabaseError (a damaged file): the store. Integrity,
        # data and binding errors, and Python's own encoding/overflow errors: a value in the batch.
        cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
        if isinstance(cause, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError):
            return False
        if isinstance(cause, sqlite3.InterfaceError | UnicodeError | ValueError | OverflowError | TypeError):
            return False
        return isinstance(cause, sqlite3.DatabaseError) or isinstance(exc, StoreError | OSError)

    async def commit(
        self,
        batch: list[Intake],
        updates: list[Run],
        outbox: Sequence[OutboxRow] = (),
        fence: Fence | None = None,
    ) -> list[Recorded]:
        # the lease lives in this process (store/local.py): checked here, on the event loop
        coordination = self.coordination  # a property: read once a commit
        coordination.check(fence)
        # The rows are built here, on the caller's thread, before the hop: that is the snapshot
        # (and the serialization overlaps the store thread's work on the previous call).
        runs = [(i.run, _run_values(i.run)) for i in batch if i.run is not None]
        foreign = self.foreign(fence, updates)  # owned by another replica: refused
        updates = [r for r in updates if r.id not in foreign]
        values = [_run_update_values(r) for r in updates]
        rows = [{"sink": r.sink, "doc": r.doc} for r in outbox]

        def op(conn: sqlite3.Connection) -> tuple[list[Recorded], list[str]]:
            recorded = self._record_sync(conn, batch, runs) if batch else []
            refused = _update(conn, values) if values else []
            if rows:
                conn.executemany(Q.insert_outbox, rows)
            return recorded, refused

        recorded, refused = await self._w_held(len(batch) + len(values) + len(rows), op)
        coordination.own(fence, recorded)
        coordination.ended(updates)
        self.refused(sorted(foreign) + refused)
        return recorded

    async def outbox_take(self, sink: str, limit: int) -> list[tuple[int, str]]:
        params = {"sink": sink, "limit": limit}
        rows = await self._r(lambda c: c.execute(Q.take_outbox, params).fetchall())
        return [(int(seq), str(doc)) for seq, doc in rows]

    async def outbox_done(self, sink: str, upto: int) -> None:
        await self._w(lambda c: c.execute(Q.delete_outbox, {"sink": sink, "upto": upto}))

    async def outbox_size(self, sink: str) -> int:
        row = await self._r(lambda c: c.execute(Q.count_outbox, {"sink": sink}).fetchone())
        return int(row[0])

    async def get_run(self, run_id: str) -> Run | None:
        row = await self._r(lambda c: c.execute(Q.select_runs + " WHERE id = ?", (run_id,)).fetchone())
        return None if row is None else _run_from_row(row)

    async def get_run_by_key(self, key: str) -> Run | None:
        row = await self._r(lambda c: c.execute(Q.select_runs + " WHERE key = ?", (key,)).fetchone())
        return None if row is None else _run_from_row(row)

    async def list_runs(self, query: RunQuery) -> Page[Run]:
        limit = check_limit(query.limit)
        sql, args = runs_query(query, limit)
        rows = await self._r(lambda c: c.execute(sql, args).fetchall())
        items = [_run_from_row(r) for r in rows[:limit]]
        cursor = encode_cursor(rows[limit - 1][9], rows[limit - 1][0]) if len(rows) > limit else None
        return Page(items=items, next_cursor=cursor)

    async def active_runs(self) -> list[Run]:
        sql = ACTIVE_RUNS_SQL
        rows = await self._r(lambda c: c.execute(sql).fetchall())
        return [_run_from_row(r) for r in rows]

    async def pending_runs(
        self, owner: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Run], tuple[datetime, str] | None]:
        sql, args = PENDING_RUNS_SQL, [to_us(after[0]) if after else -1, after[1] if after else "", limit]
        rows = await self._r(lambda c: c.execute(sql, args).fetchall())
        runs = [_run_from_row(r) for r in rows]
        return self._owned(runs, owner), read_on(runs, limit)

    async def last_runs(self, jobs: Sequence[str]) -> dict[str, Run]:
        if not jobs:
            return {}
        names = json.dumps(list(jobs))

        def op(conn: sqlite3.Connection) -> list[Any]:
            ids = [r[0] for r in conn.execute(Q.last_run_ids, {"jobs": names}) if r[0] is not None]
            sql = f"{Q.select_runs} WHERE id IN ({', '.join('?' * len(ids))})"
            return conn.execute(sql, ids).fetchall() if ids else []

        runs = [_run_from_row(r) for r in await self._r(op)]
        return {r.job: r for r in runs}

    async def activity(
        self, since: datetime, bucket: timedelta, buckets: int, events_since: datetime | None = None
    ) -> Activity:
        width = check_buckets(bucket, buckets)
        params = {"since": to_us(since), "bucket": width, "n": buckets, "states": _STATE_LIST}
        ev = {"since": to_us(since if events_since is None else events_since)}

        def op(conn: sqlite3.Connection) -> Activity:
            runs = conn.execute(Q.activity_runs, params).fetchall()
            events = conn.execute(Q.activity_events, ev).fetchall()
            return Activity(
                runs=sorted(ActivityCount(int(b), RunState(s), int(n)) for b, s, n in runs if n),
                events=[SourceCount(str(src), EventOutcome(o), int(n)) for src, o, n in events],
            )

        return await self._r(op)

    async def get_event(self, event_id: str) -> Event | None:
        row = await self._r(lambda c: c.execute(Q.select_events + " WHERE id = ?", (event_id,)).fetchone())
        return None if row is None else _event_from_row(row)

    async def list_events(self, query: EventQuery) -> Page[Event]:
        limit = check_limit(query.limit)
        where: list[str] = []
        args: list[Any] = []
        if query.job is not None:
            where.append("job = ?")
            args.append(query.job)
        if query.outcomes is not None:
            where.append(f"outcome IN ({', '.join('?' * len(query.outcomes))})")
            args.extend(EventOutcome(o).value for o in query.outcomes)
        _time_window(where, args, "received_at", query.since, query.until, query.cursor)
        sql = Q.select_events + _where(where) + " ORDER BY received_at DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        rows = await self._r(lambda c: c.execute(sql, args).fetchall())
        items = [_event_from_row(r) for r in rows[:limit]]
        cursor = encode_cursor(rows[limit - 1][4], rows[limit - 1][0]) if len(rows) > limit else None
        return Page(items=items, next_cursor=cursor)

    async def last_fire(self, job: str, trigger: str) -> datetime | None:
        row = await self._r(lambda c: c.execute(Q.last_fire, {"job": job, "trigger": trigger}).fetchone())
        return None if row is None else from_us(row[0])

    async def last_fires(self) -> dict[tuple[str, str], datetime]:
        rows = await self._r(lambda c: c.execute(Q.last_fires).fetchall())
        return {(job, trigger): from_us(us) for job, trigger, us in rows}

    async def prune(self, job: str, keep: int, older_than: datetime) -> PruneResult:
        params = {"job": job, "keep": max(0, keep), "older_than": to_us(older_than)}

        def op(conn: sqlite3.Connection) -> PruneResult:
            runs = [r[0] for r in conn.execute(Q.prune_runs, params).fetchall()]
            events = conn.execute(Q.prune_events, {"job": job, "older_than": params["older_than"]}).rowcount
            return PruneResult(runs=sorted(runs), events=events)

        return await self._w(op)

    async def prune_jobs(self, rules: Sequence[PruneRule]) -> PruneResult:
        by_job = {r.job: r for r in rules}  # the last rule of a job counts
        if not by_job:
            return PruneResult()
        # prune_jobs_runs takes one keep (an OFFSET cannot vary per row): one run per distinct keep
        by_keep: dict[int, list[tuple[str, int]]] = {}
        for r in by_job.values():
            by_keep.setdefault(max(0, r.keep), []).append((r.job, to_us(r.older_than)))
        runs_params = [{"keep": keep, "rules": json.dumps(group)} for keep, group in sorted(by_keep.items())]
        events_params = {"rules": json.dumps([(r.job, to_us(r.older_than)) for r in by_job.values()])}
        return await self._call(self._prune_jobs_sync, runs_params, events_params)

    def _prune_jobs_sync(
        self, runs_params: list[dict[str, Any]], events_params: dict[str, Any]
    ) -> PruneResult:
        """On the store thread: a read first; the write transaction only if it found something."""
        if not self._read(_prune_due, runs_params, events_params):
            return PruneResult()
        return self._write(_prune_jobs_write, runs_params, events_params)

    # ---- for tests and tools

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction on the store thread (tests, diagnostics)."""
        return await self._w(lambda c: c.execute(sql, args).fetchall())


def _existing_run(conn: sqlite3.Connection, run: Run) -> Run:
    """The run that made `run`'s insert a no-op: same key, or (a different key with) the same id."""
    row = conn.execute(Q.select_runs + " WHERE key = ?", (run.key,)).fetchone()
    if row is None:
        row = conn.execute(Q.select_runs + " WHERE id = ?", (run.id,)).fetchone()
    if row is None:  # pragma: no cover - the insert conflicted on one of the two
        raise StoreError(f"run {run.id} was neither inserted nor found")
    return _run_from_row(row)


def _prune_due(
    conn: sqlite3.Connection, runs_params: list[dict[str, Any]], events_params: dict[str, Any]
) -> bool:
    """Whether `prune_jobs` would delete a run or an event (read only). With no run to delete, the
    events query sees exactly the runs that will remain."""
    if any(conn.execute(Q.prune_jobs_runs, p).fetchone() is not None for p in runs_params):
        return True
    return conn.execute(Q.prune_jobs_events, events_params).fetchone() is not None


def _prune_jobs_write(
    conn: sqlite3.Connection, runs_params: list[dict[str, Any]], events_params: dict[str, Any]
) -> PruneResult:
    """The same reads again, under the write lock, and delete what they find: runs first, so the
    events of deleted runs go in the same transaction (as `prune` does per job)."""
    runs = [r[0] for p in runs_params for r in conn.execute(Q.prune_jobs_runs, p).fetchall()]
    conn.executemany(Q.delete_run, ((r,) for r in runs))
    events = [(r[0],) for r in conn.execute(Q.prune_jobs_events, events_params).fetchall()]
    conn.executemany(Q.delete_event, events)
    return PruneResult(runs=sorted(runs), events=len(events))


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
        where.append(f"{column} >= ?")
        args.append(to_us(since))
    if until is not None:
        where.append(f"{column} < ?")
        args.append(to_us(until))
    if cursor is not None:
        us, row_id = decode_cursor(cursor)
        where.append(f"({column}, id) < (?, ?)")
        args.extend((us, row_id))
