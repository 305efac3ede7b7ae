"""SQLite schema migrations.

- an empty database migrates to the current schema (and one step at a time gives the same schema);
- reopening applies nothing (idempotent);
- a database left at any older version, holding data, migrates forward and keeps its rows.

When you add migration N+1: add its expected changes to `EXPECTED` and, if its data shape changes,
a `SEEDERS[N+1]` that writes rows the way version N+1 stores them. The forward test then covers
every version automatically (parametrized over 1..latest).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobwire.model import EventOutcome, RunState
from jobwire.store.base import RunQuery
from jobwire.store.queries import load_migrations, to_us
from jobwire.store.sqlite import (
    ACTIVE_RUNS_SQL,
    Q,
    SQLiteStore,
    connect,
    latest_version,
    migrate,
    runs_query,
    schema_version,
)

LATEST = latest_version()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

EXPECTED_TABLES = {
    "schema_version": ["version", "name", "applied_at"],
    "jobs": ["name", "definition", "origin", "paused", "updated_at"],
    "events": [
        "id", "job", "trigger", "source", "received_at", "scheduled_at", "payload", "outcome", "run_id",
        "reason", "input_location",
    ],
    "runs": [
        "id", "key", "job", "trigger", "event_id", "state", "attempt", "params", "concurrency_key",
        "created_at", "scheduled_at", "not_before", "started_at", "finished_at", "exit_code", "http_status",
        "error", "target_ref", "target_status", "history", "input_location", "environment",
    ],
    "outbox": ["seq", "sink", "doc"],
}  # fmt: skip
EXPECTED_INDEXES = {
    "events_job_received", "events_received", "events_fire",
    "runs_job_created", "runs_created", "runs_state_created", "runs_event",
}  # fmt: skip


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The schema as SQLite keeps it (type, name, normalised SQL), sorted."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL"
    ).fetchall()
    return sorted((t, n, " ".join(s.split())) for t, n, s in rows)


def open_raw(path: Path) -> sqlite3.Connection:
    return connect(path, "NORMAL")


# --------------------------------------------------------------------------- seeders: rows as of version N


def seed_v1(conn: sqlite3.Connection) -> None:
    """Rows as version 1 stores them (raw SQL, not the store: later code must read old rows)."""
    definition = json.dumps({"name": "legacy", "target": {"type": "local", "command": ["true"]}})
    conn.execute(
        "INSERT INTO jobs (name, definition, origin, paused, updated_at) VALUES (?, ?, ?, ?, ?)",
        ("legacy", definition, "file:old.yaml", 1, to_us(T0)),
    )
    conn.execute(
        "INSERT INTO events (id, job, trigger, source, received_at, scheduled_at, payload, outcome, run_id,"
        " reason, input_location) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("ev1", "legacy", "cron", "cron", to_us(T0), to_us(T0), '{"a": 1}', "run", "r1", None, None),
    )
    history = json.dumps([{"state": "pending", "at": "2026-03-01T12:00:00Z", "reason": None, "attempt": 1}])
    conn.execute(
        "INSERT INTO runs (id, key, job, trigger, event_id, state, attempt, params, concurrency_key,"
        " created_at, scheduled_at, not_before, started_at, finished_at, exit_code, http_status, error,"
        " target_ref, target_status, history, input_location, environment)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("r1", "legacy/cron/2026-03-01T12:00:00.000000Z", "legacy", "cron", "ev1", "succeeded", 1,
         '{"x": "y"}', None, to_us(T0), to_us(T0), None, to_us(T0), to_us(T0), 0, None, None, "pid-1",
         "{}", history, None, None),
    )  # fmt: skip


SEEDERS: dict[int, Callable[[sqlite3.Connection], None]] = {1: seed_v1}


def seeder_for(version: int) -> Callable[[sqlite3.Connection], None]:
    """The newest seeder written for a version at or below `version` (its rows are still valid)."""
    return SEEDERS[max(v for v in SEEDERS if v <= version)]


# --------------------------------------------------------------------------- tests


def test_migration_files_are_numbered_in_order() -> None:
    versions = [v for v, _, _ in load_migrations("sqlite")]
    assert versions == list(range(1, LATEST + 1))
    assert LATEST >= 1


def test_empty_database_migrates_to_the_current_schema(tmp_path: Path) -> None:
    conn = open_raw(tmp_path / "a.db")
    assert schema_version(conn) == 0
    assert migrate(conn) == list(range(1, LATEST + 1))
    assert schema_version(conn) == LATEST
    tables = {
        name: [c[1] for c in conn.execute(f"PRAGMA table_info({name})")]
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert tables == EXPECTED_TABLES
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert indexes >= EXPECTED_INDEXES
    assert not indexes & {"runs_active", "events_received_source"}  # merged by 0004
    # the dedupe constraint
    assert any(
        row[2] == 1 and [c[2] for c in conn.execute(f"PRAGMA index_info({row[1]})")] == ["key"]
        for row in conn.execute("PRAGMA index_list(runs)")
    )
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    rows = conn.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
    assert rows == [(v, n) for v, n, _ in load_migrations("sqlite")]

    # migrating one version at a time ends at the same schema as all at once
    stepwise = open_raw(tmp_path / "b.db")
    for v in range(1, LATEST + 1):
        assert migrate(stepwise, target=v) == [v]
    assert schema(stepwise) == schema(conn)
    conn.close()
    stepwise.close()


def test_queries_use_the_indexes(tmp_path: Path) -> None:
    conn = open_raw(tmp_path / "a.db")
    migrate(conn)

    def plan(sql: str, *args: object) -> str:
        return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))

    assert "runs_job_created" in plan(
        "SELECT id FROM runs WHERE job = ? AND (created_at, id) < (?, ?)"
        " ORDER BY created_at DESC, id DESC LIMIT 5",
        "j",
        1,
        "r",
    )
    assert "runs_state_created" in plan(
        "SELECT id FROM runs WHERE state IN ('queued', 'pending', 'running') ORDER BY created_at, id"
    )
    # one state, newest first: the index's own order, no sort (before 0004 its id came from a sort)
    assert plan("SELECT id FROM runs WHERE state = ? ORDER BY created_at DESC, id DESC LIMIT 5", "queued") == (
        "SEARCH runs USING COVERING INDEX runs_state_created (state=?)"
    )
    assert "COVERING INDEX events_received " in plan(
        "SELECT source, outcome, count(*) FROM events WHERE received_at >= ? GROUP BY source, outcome", 1
    )
    assert "runs_event" in plan("SELECT id FROM runs WHERE event_id = ?", "e")
    assert "events_fire" in plan(
        "SELECT scheduled_at FROM events WHERE job = ? AND trigger = ? AND scheduled_at IS NOT NULL"
        " ORDER BY scheduled_at DESC LIMIT 1",
        "j",
        "t",
    )
    assert "events_job_received" in plan(
        "SELECT id FROM events WHERE job = ? ORDER BY received_at DESC, id DESC LIMIT 5", "j"
    )
    conn.close()


def test_listing_active_runs_reads_their_states_ranges(tmp_path: Path) -> None:
    """With statistics that give every state the same share of 2,000 runs (as ANALYZE does), a
    listing of the active runs still reads their states' ranges of runs_state_created, not every
    run (or every run of the job) newest first; one event's runs are found by runs_event."""
    conn = open_raw(tmp_path / "a.db")
    migrate(conn)
    states = ["succeeded"] * 1990 + ["running"] * 5 + ["queued"] * 5
    conn.executemany(
        "INSERT INTO events (id, job, trigger, source, received_at, outcome) VALUES (?, 'j', 'api', 'api', ?, 'run')",
        [(f"e{i}", i) for i in range(len(states))],
    )
    conn.executemany(
        "INSERT INTO runs (id, key, job, trigger, event_id, state, attempt, params, created_at, target_status,"
        " history) VALUES (?, ?, ?, 'api', ?, ?, 1, '{}', ?, '{}', '[]')",
        [(f"r{i}", f"k{i}", "big" if i % 2 else f"j{i % 20}", f"e{i}", st, i) for i, st in enumerate(states)],
    )
    conn.execute("ANALYZE")

    def plan(query: RunQuery) -> str:
        sql, args = runs_query(query, 20)
        return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))

    active = [RunState.queued, RunState.pending, RunState.running]
    assert "SEARCH runs USING INDEX runs_state_created (state=?)" in plan(RunQuery(states=active))
    assert "SEARCH runs USING INDEX runs_state_created (state=?)" in plan(RunQuery(states=[RunState.running]))
    # half of the runs are one job's: its runs newest first would be the planner's choice
    assert "SEARCH runs USING INDEX runs_state_created (state=?)" in plan(RunQuery(job="big", states=active))
    assert "runs_event" in plan(RunQuery(event_id="e7", states=active))
    sql, args = runs_query(RunQuery(states=active), 20)
    assert [r[0] for r in conn.execute(sql, args)] == [f"r{i}" for i in range(1999, 1989, -1)]
    # every active run oldest first (`active_runs`, what a start resumes): their ranges too
    everything = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + ACTIVE_RUNS_SQL))
    assert "SEARCH runs USING INDEX runs_state_created (state=?)" in everything, everything
    conn.close()


def test_batch_queries_use_the_indexes(tmp_path: Path) -> None:
    """last_fires and prune_jobs: every table access an index search, never a sort or a table scan."""
    conn = open_raw(tmp_path / "a.db")
    migrate(conn)

    def plan(sql: str, args: dict[str, object]) -> list[str]:
        return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]

    rules = json.dumps([["a", 100], ["b", 50]])
    [last_fires] = plan(Q.last_fires, {})  # one pass over the index, grouped in its order: no sort
    assert "COVERING INDEX events_fire" in last_fires
    for sql, args in [
        (Q.prune_jobs_runs, {"rules": rules, "keep": 3}),
        (Q.prune_jobs_events, {"rules": rules}),
    ]:
        steps = plan(sql, args)
        assert not [s for s in steps if "TEMP B-TREE" in s or s.startswith(("SCAN runs", "SCAN events"))]
        assert any("runs_job_created (job=? AND created_at<?)" in s for s in steps) or any(
            "events_job_received (job=? AND received_at<?)" in s for s in steps
        )
    conn.close()


async def test_reopen_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    for _ in range(3):
        store = SQLiteStore(url)
        await store.open()
        assert await store.execute("SELECT max(version), count(*) FROM schema_version") == [(LATEST, LATEST)]
        await store.close()
    conn = open_raw(tmp_path / "j.db")
    assert migrate(conn) == []
    conn.close()


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = open_raw(tmp_path / "j.db")
    migrate(conn)
    conn.execute(
        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, 'future', 0)", (LATEST + 1,)
    )
    conn.close()
    store = SQLiteStore(f"sqlite:///{tmp_path / 'j.db'}")
    with pytest.raises(Exception, match="newer than this jobwire"):
        await store.open()
    # the failed open released the lock
    conn = open_raw(tmp_path / "j.db")
    conn.execute("DELETE FROM schema_version WHERE version = ?", (LATEST + 1,))
    conn.close()
    await store.open()
    await store.close()


@pytest.mark.parametrize("start", range(1, LATEST + 1))
async def test_database_with_data_migrates_forward(tmp_path: Path, start: int) -> None:
    path = tmp_path / "old.db"
    conn = open_raw(path)
    assert migrate(conn, target=start) == list(range(1, start + 1))
    conn.execute("BEGIN")
    seeder_for(start)(conn)
    conn.execute("COMMIT")
    conn.close()

    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()  # migrates start → LATEST
    try:
        assert await store.execute("SELECT max(version) FROM schema_version") == [(LATEST,)]
        stored = await store.get_job("legacy")
        assert stored is not None and stored.paused and stored.origin == "file:old.yaml"
        assert stored.updated_at == T0
        run = await store.get_run("r1")
        assert run is not None and run.state == RunState.succeeded and run.params == {"x": "y"}
        assert run.created_at == T0 and run.history[0].at == T0 and run.target_ref == "pid-1"
        event = await store.get_event("ev1")
        assert event is not None and event.outcome == EventOutcome.run and event.payload == {"a": 1}
        assert await store.last_fire("legacy", "cron") == T0
    finally:
        await store.close()
