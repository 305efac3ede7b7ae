"""The `postgres` source (seed 001) against a real PostgreSQL: each test its own database
`jwtest_<uuid>`, dropped at the end. Without PostgreSQL on 127.0.0.1:5432 the tests skip — and
fail when CI=true."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from jobwire.cli import app
from jobwire.model import (
    Admission,
    Event,
    EventOutcome,
    Incoming,
    RunError,
    StatusBlock,
    StatusDocument,
    event_run_key,
    run_id_for,
    utcnow,
)
from jobwire.sources.base import Binding, IntakeUnavailable
from jobwire.sources.postgres.install import install_trigger
from jobwire.sources.postgres.sink import CLAIMS, PostgresStatusSink, build_sinks
from jobwire.sources.postgres.source import APPLICATION_NAME, PostgresSource, build
from jobwire.sources.postgres.spec import PostgresSettings, PostgresTrigger, check_condition, global_bindings
from jobwire.sources.postgres.sql import SINK_APPLICATION, SOURCE_APPLICATION, install_sql
from tests.contract import test_source_contract as contract
from tests.support.server import Server
from tests.support.waiting import eventually, eventually_sync

STEP = 20.0
"""Deadline of each step of the kill rounds: a stalled step fails there, named, not at the test's timeout."""
ADMIN_DSN = os.environ.get("JOBWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLE = """
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    type text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    run_id text,
    error text,
    amount numeric,
    params jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


def _dsn_for(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _reachable() -> str | None:
    try:
        asyncio.run(_admin("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database with seed 001's `jobs` table and the notifier trigger installed."""
    why = _reachable()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is not reachable at {ADMIN_DSN} ({why}); CI needs it")
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_DSN} ({why})")
    name = f"jwtest_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    dsn = _dsn_for(name)

    async def setup() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(TABLE)
        finally:
            await conn.close()
        await install_trigger(dsn, "jobs", "job_scheduler")

    try:
        asyncio.run(setup())
        yield dsn
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class FakeIntake:
    """Records every Incoming and answers like the engine: one run per run key (job, trigger,
    event key), a `duplicate` for the same key again, `invalid` for a job it does not know."""

    jobs: frozenset[str] = frozenset({"build", "report"})
    incomings: list[Incoming] = field(default_factory=list)
    runs: dict[str, str] = field(default_factory=dict)
    """run key -> run id."""
    down: bool = False
    refused: int = 0
    calls: int = 0
    gate: asyncio.Event | None = None
    """When set: submit waits for it (an engine whose commit is slow)."""
    paused: frozenset[str] = frozenset()

    async def submit(self, events: Sequence[Incoming]) -> list[Admission]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            self.refused += 1
            raise IntakeUnavailable("store is down")
        out = []
        for inc in events:
            self.incomings.append(inc)
            ev = Event(
                id=uuid.uuid4().hex, job=inc.job, trigger=inc.trigger, source=inc.source,
                received_at=utcnow(), payload=inc.payload,
            )
            if inc.job not in self.jobs:
                ev.outcome, ev.reason = EventOutcome.invalid, f"no job named {inc.job!r}"
            elif inc.job in self.paused:
                ev.outcome, ev.reason = EventOutcome.paused, "job is paused"
            else:
                assert inc.event_key is not None
                key = event_run_key(inc.job, inc.trigger, inc.event_key)
                if key in self.runs:
                    ev.outcome, ev.reason = EventOutcome.duplicate, "run key already has a run"
                else:
                    self.runs[key] = run_id_for(key)
                ev.run_id = self.runs[key]
            out.append(Admission(event=ev, run=None))
        return out

    def keys(self) -> list[str]:
        return [i.event_key or "" for i in self.incomings]


def source_for(dsn: str, *, job: str | None = None, **trigger: Any) -> PostgresSource:
    trigger.setdefault("run_id_column", "run_id")
    trigger.setdefault("error_column", "error")
    trigger.setdefault("safety_interval", "60s")
    t = PostgresTrigger(dsn=dsn, **trigger)
    sources = build([Binding(job=job, trigger_id="postgres", trigger=t)], PostgresSettings())
    assert len(sources) == 1
    src = sources[0]
    assert isinstance(src, PostgresSource)
    return src


@contextlib.asynccontextmanager
async def running(source: PostgresSource, intake: FakeIntake) -> AsyncIterator[dict[str, int]]:
    """Run the source as the engine does: when `run` raises, call it again (with a short backoff)."""
    stats = {"restarts": 0}

    async def supervise() -> None:
        while True:
            try:
                await source.run(intake)
            except Exception:
                stats["restarts"] += 1
                await asyncio.sleep(0.01)  # the engine's backoff, shortened

    task = asyncio.create_task(supervise())
    try:
        await eventually(lambda: source.health.connected, what="source connected")
        yield stats
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def db(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def statuses(conn: Any) -> dict[int, tuple[str, str | None, str | None]]:
    rows = await conn.fetch("SELECT id, status, run_id, error FROM jobs ORDER BY id")
    return {r["id"]: (r["status"], r["run_id"], r["error"]) for r in rows}


async def all_claimed(conn: Any, n: int) -> bool:
    got = await conn.fetchval("SELECT count(*) FROM jobs WHERE status <> 'pending'")
    return bool(got == n)


def expected_run_id(job: str, row_id: int, trigger: str = "postgres") -> str:
    return run_id_for(event_run_key(job, trigger, f"jobs:{row_id}"))


# --------------------------------------------------------------------------- without a database


def test_condition_stays_inside_its_where() -> None:
    assert check_condition("status = 'pending' AND (type <> 'x;y')") == "status = 'pending' AND (type <> 'x;y')"
    for bad in ["1=1); DROP TABLE jobs; --", "a) OR (b", "(a", "x = $1", "a -- b", "a /* b", "x = 'open",
                "", "x = E'\\''"]:
        with pytest.raises(ValueError):
            check_condition(bad)


def test_identifiers_refused() -> None:
    with pytest.raises(ValueError):
        PostgresTrigger(table='jobs"; drop table x; --')
    with pytest.raises(ValueError):
        PostgresTrigger(status_column="status = 'x', type")
    with pytest.raises(ValueError):
        PostgresTrigger(dsn="mysql://x")
    t = PostgresTrigger(table="queue.Jobs", channel="ch")
    assert t.table == "queue.Jobs"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSN", "postgresql://not-ours@elsewhere/x")
    assert PostgresSettings().dsn is None and global_bindings(PostgresSettings()) == []
    monkeypatch.setenv("JOBWIRE_POSTGRES_DSN", "postgresql://jw:secret@db:5432/app")
    monkeypatch.setenv("JOBWIRE_POSTGRES_RUN_ID_COLUMN", "run_id")
    monkeypatch.setenv("JOBWIRE_POSTGRES_SAFETY_INTERVAL", "5s")
    (binding,) = global_bindings(PostgresSettings())
    assert binding.job is None and binding.trigger_id == "postgres"
    t = binding.trigger
    assert (t.dsn, t.table, t.channel, t.run_id_column) == ("postgresql://jw:secret@db:5432/app", "jobs", "job_scheduler", "run_id")
    assert t.safety_interval.total_seconds() == 5 and "secret" not in repr(t)
    (source,) = build([binding], PostgresSettings())
    assert "secret" not in source.health.target
    monkeypatch.setenv("JOBWIRE_POSTGRES_INTAKE", "false")
    assert global_bindings(PostgresSettings()) == []


def test_install_trigger_print() -> None:
    result = CliRunner().invoke(app, ["db", "install-trigger", "--table", "work_items", "--channel", "wake", "--print"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert 'CREATE OR REPLACE FUNCTION "work_items_notifier"() RETURNS trigger' in out
    assert "PERFORM pg_notify(TG_ARGV[0], '');" in out
    assert 'DROP TRIGGER IF EXISTS "work_items_notifier" ON "work_items";' in out
    assert 'CREATE TRIGGER "work_items_notifier" AFTER INSERT OR UPDATE ON "work_items"' in out
    assert "EXECUTE FUNCTION \"work_items_notifier\"('wake');" in out
    assert out.strip() == install_sql("work_items", "wake").strip()
    bad = CliRunner().invoke(app, ["db", "install-trigger", "--table", "jobs; drop", "--print"])
    assert bad.exit_code == 2 and "--table" in bad.output


# --------------------------------------------------------------------------- with a database


def test_install_trigger_idempotent(database: str) -> None:
    for _ in range(2):
        result = CliRunner().invoke(app, ["db", "install-trigger", "--dsn", database, "--table", "jobs"])
        assert result.exit_code == 0, result.output
        assert "installed jobs_notifier() and trigger jobs_notifier on jobs" in result.output

    async def check() -> None:
        async with db(database) as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal"
            )
            assert n == 1
            heard: asyncio.Queue[str] = asyncio.Queue()
            await conn.add_listener("job_scheduler", lambda *a: heard.put_nowait(a[2]))
            # jobwire's own writes notify nobody; anyone else's insert or update does (in commit order)
            for app_name in (SOURCE_APPLICATION, SINK_APPLICATION):
                ours = await asyncpg.connect(database, server_settings={"application_name": app_name})
                await ours.execute("INSERT INTO jobs (type) VALUES ('build')")
                await ours.execute("UPDATE jobs SET status = 'x'")
                await ours.close()
            async with db(database) as other:
                await other.execute("INSERT INTO jobs (type) VALUES ('build')")
                await other.execute("UPDATE jobs SET status = 'x'")
            assert await asyncio.wait_for(heard.get(), 10) == "job_scheduler"
            assert await asyncio.wait_for(heard.get(), 10) == "job_scheduler"
            assert heard.empty()

    asyncio.run(check())


async def test_insert_makes_one_incoming_and_row_scheduled(database: str) -> None:
    intake = FakeIntake()
    source = source_for(database, job="build")
    async with running(source, intake), db(database) as conn:
        await conn.execute(
            "INSERT INTO jobs (type, amount, params) VALUES ('build', 12.50, '{\"x\": [1, 2]}')"
        )
        await eventually(lambda: all_claimed(conn, 1), what="row claimed")
        assert len(intake.incomings) == 1
        inc = intake.incomings[0]
        assert (inc.job, inc.trigger, inc.source, inc.event_key) == ("build", "postgres", "postgres", "jobs:1")
        assert inc.payload["amount"] == str(Decimal("12.50"))
        assert inc.payload["params"] == {"x": [1, 2]}
        assert isinstance(inc.payload["created_at"], str) and "T" in inc.payload["created_at"]
        assert (await statuses(conn))[1] == ("scheduled", expected_run_id("build", 1), None)
        # rows of another type are not this job's; a second insert is handed in once too
        await conn.execute("INSERT INTO jobs (type) VALUES ('report')")
        await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
        await eventually(lambda: len(intake.incomings) == 2, what="second row")
        await eventually(lambda: all_claimed(conn, 2), what="second row claimed")
        assert [i.event_key for i in intake.incomings] == ["jobs:1", "jobs:3"]
        assert (await statuses(conn))[2][0] == "pending"
    assert source.health.messages == 2


async def test_row_inserted_while_stopped_is_taken_at_start(database: str) -> None:
    async with db(database) as conn:
        await conn.execute("INSERT INTO jobs (type) SELECT 'build' FROM generate_series(1, 250)")
        intake = FakeIntake()
        async with running(source_for(database, job="build", batch=100), intake):
            await eventually(lambda: all_claimed(conn, 250), what="rows claimed at start")
        assert sorted(intake.keys()) == sorted(f"jobs:{i}" for i in range(1, 251))


async def test_lost_notification_safety_interval(database: str) -> None:
    async with db(database) as conn:
        await conn.execute('DROP TRIGGER "jobs_notifier" ON jobs')
        intake = FakeIntake()
        async with running(source_for(database, job="build", safety_interval="200ms"), intake):
            await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
            await eventually(lambda: all_claimed(conn, 1), what="row claimed without a NOTIFY")
        assert intake.keys() == ["jobs:1"]


async def test_burst_of_notifications_is_coalesced(database: str) -> None:
    """1,000 inserts in 1,000 transactions while a claim is busy (the engine's commit is slow):
    their 1,000 notifications make one wake-up, and the rows are taken a full batch per select."""
    gate = asyncio.Event()
    intake = FakeIntake(gate=gate)
    source = source_for(database, job="build", batch=100)
    async with running(source, intake), db(database) as conn:
        await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
        await eventually(lambda: intake.calls == 1, what="the first claim waiting in submit")
        selects_before = source.selects
        for _ in range(999):  # 999 transactions: 999 notifications
            await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
        gate.set()
        await eventually(lambda: all_claimed(conn, 1000), what="burst claimed", timeout=30)
        await eventually(lambda: source.notifications >= 999, what="every notification heard")
        selects = source.selects - selects_before
    assert len(intake.incomings) == 1000 and len(set(intake.keys())) == 1000
    print(f"1000 inserts: {source.notifications} notifications heard, {selects} selects")
    # 10 full batches, the short one that ends the loop, and at most one more wake-up
    assert selects <= 12, selects


async def test_inserts_while_claiming_take_fewer_selects_than_rows(database: str) -> None:
    """Without a busy intake, each select takes the rows that arrived since the last one: fewer
    selects than inserts, how many fewer depends on timing (not asserted beyond that)."""
    intake = FakeIntake()
    source = source_for(database, job="build", batch=100)
    async with running(source, intake), db(database) as conn:
        selects_before = source.selects
        for _ in range(1000):
            await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
        await eventually(lambda: all_claimed(conn, 1000), what="burst claimed", timeout=30)
        selects = source.selects - selects_before
    print(f"1000 inserts, no pause: {source.notifications} notifications heard, {selects} selects")
    assert len(set(intake.keys())) == 1000 and selects < 1000


async def test_global_intake_rows_name_their_job_and_invalid_records_reason(database: str) -> None:
    settings = PostgresSettings(dsn=database, run_id_column="run_id", error_column="error")
    (source,) = build(global_bindings(settings), settings)
    assert isinstance(source, PostgresSource)
    intake = FakeIntake()
    async with running(source, intake), db(database) as conn:
        await conn.execute("INSERT INTO jobs (type) VALUES ('build'), ('nosuchjob'), ('report')")
        await eventually(lambda: all_claimed(conn, 3), what="rows claimed")
        rows = await statuses(conn)
    assert [i.job for i in intake.incomings] == ["build", "nosuchjob", "report"]
    assert rows[1] == ("scheduled", expected_run_id("build", 1), None)
    assert rows[2] == ("failed", None, "no job named 'nosuchjob'")
    assert rows[3] == ("scheduled", expected_run_id("report", 3), None)
    assert source.health.dead_lettered == 1


async def test_paused_job_row_is_skipped_with_the_reason_and_type_value(database: str) -> None:
    intake = FakeIntake(paused=frozenset({"build"}))
    async with running(source_for(database, job="build", type_value="compile"), intake), db(database) as conn:
        await conn.execute("INSERT INTO jobs (type) VALUES ('build'), ('compile')")
        await eventually(lambda: all_claimed(conn, 1), what="the 'compile' row claimed")
        rows = await statuses(conn)
    assert rows == {1: ("pending", None, None), 2: ("skipped", None, "job is paused")}
    assert [(i.job, i.event_key) for i in intake.incomings] == [("build", "jobs:2")]


async def test_intake_unavailable_leaves_row_pending_and_retries(database: str) -> None:
    intake = FakeIntake(down=True)
    async with running(source_for(database, job="build"), intake), db(database) as conn:
        await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
        await eventually(lambda: intake.refused >= 2, what="submit refused twice")
        assert (await statuses(conn))[1] == ("pending", None, None)
        intake.down = False
        await eventually(lambda: all_claimed(conn, 1), what="row claimed after the intake is back")
        assert (await statuses(conn))[1] == ("scheduled", expected_run_id("build", 1), None)
    assert intake.keys() == ["jobs:1"]


async def test_version_column_makes_a_new_event_key(database: str) -> None:
    async with db(database) as conn:
        await conn.execute("ALTER TABLE jobs ADD COLUMN version int NOT NULL DEFAULT 1")
        intake = FakeIntake()
        async with running(source_for(database, job="build", version_column="version"), intake):
            await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
            await eventually(lambda: all_claimed(conn, 1), what="first version")
            await conn.execute("UPDATE jobs SET status = 'pending', version = 2")
            await eventually(lambda: len(intake.incomings) == 2, what="second version")
            await eventually(lambda: all_claimed(conn, 1), what="second version claimed")
        assert intake.keys() == ["jobs:1@1", "jobs:1@2"]
        assert len(intake.runs) == 2


async def test_terminate_listener_during_inserts_every_row_once(database: str) -> None:
    kills, per_kill = int(os.environ.get("JOBWIRE_PG_KILLS", "50")), 10
    intake = FakeIntake()
    source = source_for(database, job="build", batch=20)
    async with running(source, intake) as stats, db(database) as conn:
        killed: list[int] = []
        slowest = (0.0, -1, "")  # (seconds, round, step): names the step if a round stalls

        async def new_listener() -> int | None:
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
                APPLICATION_NAME,
                timeout=STEP,
            )
            return pid if pid is not None and pid not in killed else None

        for n in range(kills):
            t0 = time.monotonic()
            for _ in range(per_kill):
                await conn.execute("INSERT INTO jobs (type) VALUES ('build')", timeout=STEP)
            t1 = time.monotonic()
            pid = await eventually(new_listener, what=f"a new listener backend (round {n}, {stats})", timeout=STEP)
            t2 = time.monotonic()
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid, timeout=STEP)
            killed.append(pid)
            steps = {"inserts": t1 - t0, "reconnect": t2 - t1, "terminate": time.monotonic() - t2}
            step = max(steps, key=lambda k: steps[k])
            slowest = max(slowest, (steps[step], n, step))
        total = kills * per_kill
        await eventually(lambda: all_claimed(conn, total), what="every row claimed", timeout=60)
        rows = await statuses(conn)
        # the last kill's restart, before the source is stopped (else the stop and the lost
        # connection race: the error is then part of the stop, not a restart)
        await eventually(lambda: stats["restarts"] >= kills, what=f"a restart per kill ({stats})", timeout=STEP)
    handed = intake.keys()
    assert set(handed) == {f"jobs:{i}" for i in range(1, total + 1)}
    assert len(intake.runs) == total  # one run per row
    assert all(s == "scheduled" and rid == expected_run_id("build", i) for i, (s, rid, _) in rows.items())
    again = len(handed) - total
    print(
        f"{kills} kills during {total} inserts: {stats['restarts']} restarts, {again} rows handed in again; "
        f"slowest step {slowest[2]} of round {slowest[1]}: {slowest[0]:.2f} s"
    )
    assert stats["restarts"] >= kills
    # only a claim cut between its submit and its commit is handed in again (as a duplicate)
    assert again <= kills * 20


async def test_two_sources_on_one_table_each_row_once(database: str) -> None:
    shared = FakeIntake()
    a, b = FakeIntake(), FakeIntake()
    a.runs = b.runs = shared.runs
    sa = source_for(database, job="build", batch=10)
    sb = source_for(database, job="build", batch=10)
    async with running(sa, a), running(sb, b), db(database) as conn:
        for _ in range(50):
            await conn.execute("INSERT INTO jobs (type) SELECT 'build' FROM generate_series(1, 10)")
        await eventually(lambda: all_claimed(conn, 500), what="every row claimed", timeout=30)
    ka, kb = a.keys(), b.keys()
    assert len(ka) + len(kb) == 500
    assert set(ka) | set(kb) == {f"jobs:{i}" for i in range(1, 501)}
    assert not set(ka) & set(kb)
    print(f"two sources: {len(ka)} and {len(kb)} rows")


def _doc(run_id: str, action: str, job: str = "build", error: str | None = None) -> StatusDocument:
    return StatusDocument(
        name=job, action=action, status=StatusBlock(), run_id=run_id, event_id="e1", job=job,
        attempt=1, time=utcnow(), error=RunError(message=error) if error else None,
    )


async def test_status_sink_writes_run_progress(database: str) -> None:
    t = PostgresTrigger(dsn=database, run_id_column="run_id", error_column="error")
    (sink,) = build_sinks([Binding(job="build", trigger_id="postgres", trigger=t)], PostgresSettings())
    assert isinstance(sink, PostgresStatusSink)
    await sink.start()
    try:
        async with db(database) as conn:
            await conn.execute("INSERT INTO jobs (type, status, run_id) VALUES ('build', 'scheduled', 'r1'), "
                               "('build', 'scheduled', 'r2')")
            await sink.publish(_doc("r1", "running"))
            assert (await statuses(conn))[1] == ("running", "r1", None)
            await sink.publish(_doc("r1", "succeeded"))
            await sink.publish(_doc("r2", "timed_out", error="took too long"))
            await sink.publish(_doc("r9", "running"))  # not from this table: nothing, no error
            await sink.publish(_doc("r1", "running", job="other"))  # another job's run: ignored
            rows = await statuses(conn)
            assert rows[1] == ("succeeded", "r1", None)
            assert rows[2] == ("failed", "r2", "took too long")
            # a document that races its own claim waits for the claim's commit
            await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
            CLAIMS.open((database, "jobs"), ["r3"])
            before = sink.statements
            publish = asyncio.create_task(sink.publish(_doc("r3", "running")))
            await eventually(lambda: sink.statements > before, what="the sink's first update returned")
            assert not publish.done()  # its update matched nothing: it waits for the claim
            await conn.execute("UPDATE jobs SET status = 'scheduled', run_id = 'r3' WHERE id = 3")
            CLAIMS.close((database, "jobs"), ["r3"])
            await asyncio.wait_for(publish, 10)
            assert (await statuses(conn))[3] == ("running", "r3", None)
    finally:
        await sink.close()


# --------------------------------------------------------------------------- two jobwire processes


def test_two_jobwire_processes_on_one_table_launch_each_row_once(database: str, tmp_path: Path) -> None:
    """Two `jobwire serve` (each its own SQLite store: nothing shared but the table) on one table:
    every row makes exactly one run in exactly one of them; a row whose parameters are invalid is
    marked `failed` with the reason."""
    n = 300
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"""
jobs:
  - name: build
    triggers:
      - postgres: {{dsn: "{database}", run_id_column: run_id, error_column: error, batch: 20}}
    parameters: [{{name: amount, type: number}}]
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'}}
"""
    )
    servers = [Server(tmp_path / f"data{i}", jobs).start() for i in range(2)]
    try:

        async def insert() -> None:
            async with db(database) as conn:
                await conn.execute("INSERT INTO jobs (type, amount) VALUES ('build', NULL)")  # invalid
                for start in range(0, n, 10):
                    await conn.execute(
                        "INSERT INTO jobs (type, amount) SELECT 'build', g FROM generate_series($1::int, $2::int) g",
                        start,
                        start + 9,
                    )

        async def rows() -> dict[int, tuple[str, str | None, str | None]]:
            async with db(database) as conn:
                return await statuses(conn)

        asyncio.run(insert())
        lines = lambda: ledger.read_text().split() if ledger.exists() else []  # noqa: E731
        eventually_sync(lambda: len(lines()) >= n, 60, "every valid row's run to start")
        final = eventually_sync(
            lambda: (r := asyncio.run(rows())) and all(s != "pending" for s, _, _ in r.values()) and r,
            30,
            "every row claimed",
        )
        made = []
        for srv in servers:
            with srv.client() as c:
                made.append(len(c.get("/runs", params={"job": "build", "limit": 500}).json()["items"]))
        print(f"two jobwire processes: {made} runs")
        assert sum(made) == n, made
    finally:
        for s in servers:
            s.stop()
    assert final[1][0] == "failed" and "amount" in (final[1][2] or ""), final[1]
    expected = {i: expected_run_id("build", i) for i in range(2, n + 2)}
    assert {i: (s, rid) for i, (s, rid, _) in final.items() if i != 1} == {
        i: ("scheduled", rid) for i, rid in expected.items()
    }
    counts = collections.Counter(lines())
    assert set(counts) == set(expected.values()) and max(counts.values()) == 1, "each row one run, once"
    per_server = [s.output().count("postgres source listening") for s in servers]
    assert per_server == [1, 1], per_server


@pytest.mark.slow
def test_jobwire_serve_with_listener_killed_runs_each_row_once(database: str, tmp_path: Path) -> None:
    """`jobwire serve` while its listener's backend is terminated during inserts: the engine's
    supervisor restarts the source, each row makes exactly one run and its process runs once.
    5 kills, not 100: the supervisor's backoff doubles from 0.5 s per failure and starts over only
    after 30 s without one (100 kills in a row would wait ~90 minutes); the 100-kill run is
    `test_terminate_listener_during_inserts_every_row_once`, with a test supervisor."""
    n, kills = 500, 5
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"""
jobs:
  - name: build
    triggers: [{{postgres: {{dsn: "{database}", run_id_column: run_id, batch: 20}}}}]
    concurrency: {{max_running: 64}}
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'}}
"""
    )
    srv = Server(tmp_path / "data", jobs).start()
    try:

        async def insert_and_kill() -> int:
            done = 0
            async with db(database) as conn:
                killed: list[int] = []

                async def new_listener() -> int | None:
                    pid = await conn.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = $1",
                        APPLICATION_NAME,
                    )
                    return pid if pid is not None and pid not in killed else None

                for _ in range(kills):
                    for _ in range(n // kills):
                        await conn.execute("INSERT INTO jobs (type) VALUES ('build')")
                    pid = await eventually(new_listener, timeout=60, what="the restarted listener")
                    done += bool(await conn.fetchval("SELECT pg_terminate_backend($1)", pid))
                    killed.append(pid)
            return done

        terminated = asyncio.run(insert_and_kill())

        async def rows() -> dict[int, tuple[str, str | None, str | None]]:
            async with db(database) as conn:
                return await statuses(conn)

        lines = lambda: ledger.read_text().split() if ledger.exists() else []  # noqa: E731
        eventually_sync(lambda: len(lines()) >= n, 120, "every row's run to start")
        final = eventually_sync(
            lambda: (r := asyncio.run(rows())) and all(s != "pending" for s, _, _ in r.values()) and r,
            60,
            "every row claimed",
        )
        with srv.client() as c:
            events = c.get("/events", params={"limit": 500}).json()
    finally:
        srv.stop()
    assert terminated == kills
    expected = {i: expected_run_id("build", i) for i in range(1, n + 1)}
    assert {i: rid for i, (_, rid, _) in final.items()} == expected
    # a row taken again after its claim was cut finds its run and shows that run's state
    states = collections.Counter(s for s, _, _ in final.values())
    assert set(states) <= {"scheduled", "running", "succeeded"}, states
    counts = collections.Counter(lines())
    assert set(counts) == set(expected.values()) and max(counts.values()) == 1, "each row one run, run once"
    print(f"jobwire serve, {kills} listener kills during {n} inserts: {len(counts)} runs; rows {dict(states)}; "
          f"latest events {collections.Counter(e['outcome'] for e in events['items'])}")


# --------------------------------------------------------------------------- the source contract suite
# tests/contract/test_source_contract.py's four tests, unchanged, against the postgres kind: each
# message a row of a table with a JSON body column and its message id as the event key column.

world = contract.world  # the suite's engine fixture, with this module's `harness`
test_contract_a_message_becomes_exactly_one_run = contract.test_a_message_becomes_exactly_one_run
test_contract_redelivered_duplicate = contract.test_a_redelivered_message_is_a_recorded_duplicate
test_contract_poison = contract.test_a_poison_message_is_dead_lettered_with_its_reason_and_the_next_runs
test_contract_dropped_connections = contract.test_dropped_connections_mid_burst_lose_and_double_nothing

CONTRACT_TABLE = """
CREATE TABLE messages (
    id bigserial PRIMARY KEY,
    message_id text NOT NULL,
    body text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    run_id text,
    error text
)
"""


class PostgresHarness:
    kind = "postgres"
    twice = False  # a claimed row is marked in the transaction that records it

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.env = {"JOBWIRE_POSTGRES_INTAKE": "false"}
        self._conn: Any = None

    async def open(self) -> None:
        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.execute(CONTRACT_TABLE)
        await install_trigger(self.dsn, "messages", "contract")

    async def close(self) -> None:
        await self._conn.close()

    def trigger(self) -> dict[str, Any]:
        return {
            "type": "postgres", "dsn": self.dsn, "table": "messages", "channel": "contract",
            "type_column": None, "key_column": "message_id", "payload_column": "body",
            "run_id_column": "run_id", "error_column": "error", "batch": 64,
        }

    async def publish(self, body: bytes, key: str) -> None:
        await self._conn.execute("INSERT INTO messages (message_id, body) VALUES ($1, $2)", key, body.decode())

    async def dead_letters(self) -> list[tuple[bytes, str]]:
        rows = await self._conn.fetch("SELECT body, error FROM messages WHERE status = 'failed' ORDER BY id")
        return [(r["body"].encode(), r["error"]) for r in rows]

    async def drop_connections(self) -> None:
        await self._conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture
async def harness(database: str) -> AsyncIterator[PostgresHarness]:
    h = PostgresHarness(database)
    await h.open()
    try:
        yield h
    finally:
        await h.close()



async def test_engine_writes_each_runs_progress_back_to_its_row(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real engine with the plug's status sink on: a row's run that succeeds ends `succeeded`,
    one that fails ends `failed` with the error; a row naming no job is `failed` with the reason."""
    from jobwire.config import Settings
    from jobwire.engine import Engine
    from jobwire.model import Job

    monkeypatch.setenv("JOBWIRE_POSTGRES_STATUS", "true")
    monkeypatch.delenv("JOBWIRE_POSTGRES_DSN", raising=False)
    engine = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await engine.start()
    try:
        trigger = {"type": "postgres", "dsn": database, "run_id_column": "run_id", "error_column": "error"}
        for name, command in (("build", ["true"]), ("report", ["false"])):
            await engine.put_job(
                Job.model_validate(
                    {"name": name, "triggers": [trigger], "target": {"type": "local", "command": command}}
                )
            )
        await eventually(
            lambda: sum(s["connected"] for s in engine.health()["sources"]) >= 1, 20, "the source to connect"
        )
        async with db(database) as conn:
            await conn.execute("INSERT INTO jobs (type) VALUES ('build'), ('report')")

            async def ended() -> dict[int, tuple[str, str | None, str | None]] | None:
                rows = await statuses(conn)
                return rows if all(s in ("succeeded", "failed") for s, _, _ in rows.values()) else None

            rows = await eventually(ended, 30, "both rows to show their run's end")
    finally:
        await engine.stop()
    assert rows[1] == ("succeeded", expected_run_id("build", 1), None)
    status, run_id, error = rows[2]
    assert (status, run_id) == ("failed", expected_run_id("report", 2)) and error, rows[2]


async def test_status_routes_follow_running_sources_and_one_bad_database_blocks_no_other(database: str) -> None:
    from jobwire.sources.postgres.sink import StatusWriteError
    from jobwire.sources.postgres.source import ROUTES, Routes, StatusTarget

    source = source_for(database, job="build")
    assert not [t for t in ROUTES.for_job("build") if t.dsn == database]
    async with running(source, FakeIntake()):
        assert [t.table for t in ROUTES.for_job("build") if t.dsn == database] == ["jobs"]
        assert not [t for t in ROUTES.for_job("report") if t.dsn == database]
    assert not [t for t in ROUTES.for_job("build") if t.dsn == database], "a stopped source writes nothing"

    routes = Routes()
    routes.register("away", {StatusTarget("postgresql://postgres@127.0.0.1:1/x", "jobs", "status", "run_id", None): None})
    routes.register("here", {StatusTarget(database, "jobs", "status", "run_id", "error"): None})
    sink = PostgresStatusSink(routes)
    try:
        async with db(database) as conn:
            await conn.execute("INSERT INTO jobs (type, status, run_id) VALUES ('build', 'scheduled', 'r1')")
            with pytest.raises(StatusWriteError):
                await sink.publish(_doc("r1", "running"))
            assert (await statuses(conn))[1] == ("running", "r1", None)
    finally:
        await sink.close()
