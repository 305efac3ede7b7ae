"""PostgreSQL store: schema migrations, the outdated-schema refusal, the single-jobwire lock and
which errors mean "the store is unavailable". Each test its own database `jwtest_<uuid>`, dropped
at the end. Without PostgreSQL on 127.0.0.1:5432 the tests skip — and fail when CI=true.

When you add migration N+1: add its tables/indexes to `EXPECTED_*`; keep it additive (see the
header of 0001_initial.sql) so an old and a new jobwire can share the database during an upgrade.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from typer.testing import CliRunner

from jobwire.cli import app
from jobwire.model import Event, EventOutcome
from jobwire.store import Intake, StoreError, open_store
from jobwire.store.postgres import PostgresStore, latest_version, migrate, schema_version
from jobwire.store.queries import load_migrations

ADMIN_DSN = os.environ.get("JOBWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
LATEST = latest_version()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

EXPECTED_TABLES = {
    "jobwire_schema_version": ["version", "name", "applied_at"],
    "jobs": ["name", "definition", "origin", "paused", "updated_at"],
    "events": [
        "id", "job", "trigger", "source", "received_at", "scheduled_at", "payload", "outcome", "run_id",
        "reason", "input_location",
    ],
    "runs": [
        "id", "key", "job", "trigger", "event_id", "state", "attempt", "params", "concurrency_key",
        "created_at", "scheduled_at", "not_before", "started_at", "finished_at", "exit_code", "http_status",
        "error", "target_ref", "target_status", "history", "input_location", "environment",
        "owner",  # 0003
    ],
    "outbox": ["seq", "sink", "doc"],
    # 0003: replicas (docs/replicas.md)
    "replicas": ["id", "role", "host", "pid", "started_at", "heartbeat_at", "expires_at"],
    "leases": ["name", "holder", "token", "acquired_at", "expires_at"],
    # 0004: shared state (docs/replicas.md, "What the replicas share")
    "jobwire_settings": ["name", "value", "created_at"],
}  # fmt: skip
EXPECTED_INDEXES = {
    "events_job_received", "events_received", "events_fire",
    "runs_job_created", "runs_created", "runs_state_created", "runs_event", "runs_key_unique", "outbox_by_sink",
    "runs_owner_active", "replicas_pkey", "leases_pkey",
    "runs_slots",
}  # fmt: skip


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A fresh, empty database."""
    name = f"jwtest_{uuid.uuid4().hex[:16]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        why = f"PostgreSQL is not reachable at {ADMIN_DSN} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI needs it")
        pytest.skip(why)
    try:
        yield f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


def test_migration_files_are_numbered_in_order() -> None:
    assert [v for v, _, _ in load_migrations("postgres")] == list(range(1, LATEST + 1))
    assert LATEST >= 1


async def test_empty_database_migrates_to_the_latest_schema_and_again_is_a_no_op(url: str) -> None:
    conn = await connect(url)
    try:
        assert await schema_version(conn) == 0
        assert await migrate(conn) == list(range(1, LATEST + 1))
        assert await schema_version(conn) == LATEST
        rows = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        )
        tables: dict[str, list[str]] = {}
        for r in rows:
            tables.setdefault(r[0], []).append(r[1])
        assert tables == EXPECTED_TABLES
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
        assert indexes >= EXPECTED_INDEXES
        assert not indexes & {"runs_active", "events_received_source"}  # merged by 0005
        versions = await conn.fetch("SELECT version, name FROM jobwire_schema_version ORDER BY version")
        assert [tuple(r) for r in versions] == [(v, n) for v, n, _ in load_migrations("postgres")]
        # idempotent
        assert await migrate(conn) == []
    finally:
        await conn.close()
    # and so is opening a migrated database, again and again
    for _ in range(2):
        store = PostgresStore(url)
        await store.open()
        assert await store.execute("SELECT count(*) FROM jobwire_schema_version") == [(LATEST,)]
        await store.close()


async def test_two_upgrades_at_once_apply_each_migration_once(url: str) -> None:
    a, b = await connect(url), await connect(url)
    try:
        results = await asyncio.gather(migrate(a), migrate(b))
        assert sorted(results, key=len) == [[], list(range(1, LATEST + 1))]
    finally:
        await a.close()
        await b.close()


async def test_outdated_schema_is_refused_with_what_to_run(url: str) -> None:
    store = PostgresStore(url)
    with pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert f"at version 0, this jobwire needs version {LATEST}" in message
    assert "jobwire db upgrade" in message and "JOBWIRE_DB_AUTO_MIGRATE=true" in message
    # the refusal released the single-jobwire lock: `jobwire db upgrade`, then it starts
    result = await asyncio.to_thread(CliRunner().invoke, app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert f"from schema version 0 to {LATEST}" in result.output
    again = await asyncio.to_thread(CliRunner().invoke, app, ["db", "upgrade", "--database-url", url])
    assert again.exit_code == 0 and "nothing to do" in again.output
    await store.open()
    await store.close()


async def test_auto_migrate_migrates_at_open(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_DB_AUTO_MIGRATE", "true")
    store = open_store(url.replace("postgresql://", "postgres://", 1))
    assert isinstance(store, PostgresStore) and store.auto_migrate
    await store.open()
    try:
        assert await store.execute("SELECT max(version) FROM jobwire_schema_version") == [(LATEST,)]
    finally:
        await store.close()


async def test_newer_schema_is_refused(url: str) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO jobwire_schema_version (version, name, applied_at) VALUES ($1, 'future', now())",
            LATEST + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this jobwire"):
        await PostgresStore(url, auto_migrate=True).open()


async def test_several_jobwires_share_one_database(url: str) -> None:
    """Version 1 refused a second jobwire on a database (an advisory lock); now replicas share it
    (docs/replicas.md): both open, both register, each sees the other's writes."""
    first = PostgresStore(url, auto_migrate=True)
    await first.open()
    second = PostgresStore(url)
    try:
        await second.open()
        await first.register_replica("r1", "all", 30)
        await second.register_replica("r2", "all", 30)
        assert {r.id for r in await first.replicas()} == {"r1", "r2"}
        [rec] = await second.record([Intake(event=_event(1, outcome=EventOutcome.filtered))])
        assert await first.get_event(rec.event.id) is not None
    finally:
        await second.close()
        await first.close()


def _event(n: int, **kw: object) -> Event:
    return Event(id=f"e{n}", job="j", trigger="api", source="api", received_at=T0, **kw)  # type: ignore[arg-type]


async def test_nul_in_text_is_an_item_error_and_in_json_is_stored(url: str) -> None:
    store = PostgresStore(url, auto_migrate=True)
    await store.open()
    try:
        # JSON columns are `json`: the "\\u0000" escape is stored and comes back (as in SQLite)
        [rec] = await store.record([Intake(event=_event(1, payload={"a": "x\x00y"}, outcome=EventOutcome.filtered))])
        got = await store.get_event("e1")
        assert got is not None and got.payload == {"a": "x\x00y"}
        # a NUL in a text column is refused by PostgreSQL: the item is at fault, not the store
        with pytest.raises(StoreError) as info:
            await store.record([Intake(event=_event(2, reason="bad\x00reason", outcome=EventOutcome.filtered))])
        assert store.unavailable(info.value) is False
        # a repeated event id: the item again
        with pytest.raises(StoreError) as dup:
            await store.record([Intake(event=_event(1, outcome=EventOutcome.filtered))])
        assert store.unavailable(dup.value) is False
        assert rec.event.id == "e1"
    finally:
        await store.close()
    # a closed store, a lost connection, a full disk: the store
    assert store.unavailable(StoreError("x")) is True
    for exc in (
        asyncpg.ConnectionDoesNotExistError("gone"),
        asyncpg.CannotConnectNowError("starting"),
        asyncpg.TooManyConnectionsError("too many"),
        asyncpg.DiskFullError("no space"),
        ConnectionResetError("reset"),
    ):
        wrapped = StoreError("commit failed")
        wrapped.__cause__ = exc
        assert store.unavailable(wrapped) is True, exc
    for exc in (asyncpg.CharacterNotInRepertoireError("nul"), asyncpg.UniqueViolationError("dup")):
        wrapped = StoreError("commit failed")
        wrapped.__cause__ = exc
        assert store.unavailable(wrapped) is False, exc


async def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = PostgresStore(f"postgresql://jw:secret-pw@127.0.0.1:{port}/jw")
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "cannot connect to PostgreSQL at postgresql://jw:****@127.0.0.1" in str(info.value)
    assert "secret-pw" not in str(info.value)
    assert store.unavailable(info.value) is True


async def test_one_unstorable_item_fails_alone_in_a_group_commit(url: str) -> None:
    """As tests/security/test_batch_isolation.py does for SQLite: a lone surrogate and a NUL in a
    text column fail their own item; the 40 others in the same group commit are recorded."""
    from jobwire.engine.committer import Committer
    from jobwire.engine.metrics import Metrics
    from jobwire.store import Recorded, RunQuery
    from tests.contract.test_store_contract import intake

    store = PostgresStore(url, auto_migrate=True)
    await store.open()
    metrics = Metrics()
    committer = Committer(store, metrics)
    try:
        good = [intake(key=f"good-{n}") for n in range(40)]
        surrogate, nul = intake(key="bad-1"), intake(key="bad-2")
        assert surrogate.run is not None and nul.run is not None
        surrogate.run.params = {"p": "\ud800"}
        nul.run.target_ref = "pid\x00"
        items = [*good[:17], surrogate, *good[17:], nul]
        futures = [committer.enqueue(i) for i in items]
        committer.start()
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 2, failed
        assert all(isinstance(r, Recorded) for r in results[:17] + results[18:-1])
        stored = {r.key for r in (await store.list_runs(RunQuery(limit=100))).items}
        assert stored == {i.run.key for i in good if i.run is not None}
        assert committer.failing_since is None, "an item's fault is not the store failing"
    finally:
        await committer.stop()
        await store.close()


async def test_a_cursor_out_of_range_is_an_invalid_cursor(url: str) -> None:
    import base64

    from jobwire.store import RunQuery
    from jobwire.store.queries import InvalidCursorError

    store = PostgresStore(url, auto_migrate=True)
    await store.open()
    try:
        huge = base64.urlsafe_b64encode(f"{10**30}:r1".encode()).decode().rstrip("=")
        with pytest.raises(InvalidCursorError):
            await store.list_runs(RunQuery(cursor=huge))
    finally:
        await store.close()


def test_serve_refuses_an_outdated_schema(url: str, tmp_path: object) -> None:
    """`jobwire serve` on PostgreSQL: an empty database → one line saying to run `jobwire db
    upgrade`. (serve runs as a process — in-process it would configure logging for the test
    process.) A second serve on a database in use is no longer refused: see tests/e2e/test_replicas.py."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    env.update(JOBWIRE_DATABASE_URL=url, JOBWIRE_DATA_DIR=f"{tmp_path}/d", JOBWIRE_PORT="1")  # port never reached

    def serve() -> tuple[int, str]:
        proc = subprocess.run([sys.executable, "-m", "jobwire", "serve"], env=env, capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout + proc.stderr

    code, output = serve()
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "jobwire db upgrade" in errors[0], output
