"""The dashboard's API calls at scale: 10,000 jobs and 1,000,000 runs (and their 1,000,000 events)
in the SQLite store, `jobwire serve` on it, and the p99 of every call the dashboard's pages make.

    .venv/bin/python -m bench.bench_core dashboard [--quick]      # one section, rows as JSON
    .venv/bin/python -m bench --only dashboard                    # in the table

The store is filled with plain `executemany` on the migrated schema (synchronous=OFF: setup, not the
measurement), the runs spread evenly over the last 30 days (~33,000 in the last day, ~1,400 in the
last hour), 100 per job, 90% succeeded, 6% failed, 2% timed out, 1% cancelled, 1% interrupted;
1 event in 50 is a duplicate. Then each call is made `n` times in turn over one keep-alive
connection (a different job, run, event or page each time) and its p50/p99 reported against the
floor of 100 ms p99. `--quick`: 100,000 runs and fewer samples.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from bench.bench_core import Ctx, Row

JOBS = 10_000
RUNS = 1_000_000
FLOOR_MS = 100.0
STATES = ["succeeded"] * 90 + ["failed"] * 6 + ["timed_out"] * 2 + ["cancelled", "interrupted"]
ZONES = ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Tokyo"]


def job_name(i: int) -> str:
    return f"job-{i:05d}"


def job_json(i: int) -> str:
    from jobwire.model import Job

    job = Job.model_validate(
        {
            "name": job_name(i),
            "description": f"bench job {i}",
            "triggers": [{"cron": f"{i % 60} {i % 24} * * *", "timezone": ZONES[i % len(ZONES)]}, "api"],
            "parameters": [{"name": "day", "type": "string", "default": "today"}],
            "target": {"type": "local", "command": ["true"]},
            # keep the million: the default (newest 20, 7 days) would have the first retention sweep
            # delete ~800,000 runs in one transaction while the calls are measured
            "retention": {"keep": 1000, "ttl": "90d"},
        }
    )
    return job.model_dump_json()


async def _migrate(db: Path) -> None:
    from jobwire.store.sqlite import SQLiteStore

    store = SQLiteStore(f"sqlite:///{db}", synchronous="OFF")
    await store.open()
    await store.close()


def fill(db: Path, runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The migrated schema, then jobs, events and runs in bulk. Returns ids to sample from."""
    asyncio.run(_migrate(db))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    now_us = int(time.time() * 1e6)
    span_us = 30 * 86400 * 10**6
    step = span_us // runs
    t0 = time.monotonic()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (name, definition, origin, paused, updated_at) VALUES (?, ?, 'api', ?, ?)",
        ((job_name(i), job_json(i), int(i % 100 == 0), now_us) for i in range(JOBS)),
    )
    rng = random.Random(7)
    sample: dict[str, list[str]] = {"runs": [], "events": [], "duplicates": []}
    chunk = 50_000
    for start in range(0, runs, chunk):
        events: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        for n in range(start, min(runs, start + chunk)):
            at = now_us - span_us + n * step
            job = job_name(n % JOBS)
            eid, rid = f"e{n:010d}", f"r{n:023x}"
            state = STATES[rng.randrange(len(STATES))]
            error = None
            if state != "succeeded":
                error = json.dumps(
                    {"message": f"exit status {n % 7 + 1}", "reason": "Error", "code": n % 7 + 1}
                )
            history = json.dumps(
                [
                    {"state": "pending", "at": _iso(at), "reason": None, "attempt": 1},
                    {"state": "running", "at": _iso(at + 1000), "reason": None, "attempt": 1},
                    {"state": state, "at": _iso(at + 900_000), "reason": None, "attempt": 1},
                ]
            )
            events.append((eid, job, "api", "api", at, None, '{"day": "today"}', "run", rid, None, None))
            rows.append(
                (rid, f"{job}/api/k{n}", job, "api", eid, state, 1, '{"day": "today"}', None, at, None, None,
                 at + 1000, at + 900_000, 0 if state == "succeeded" else n % 7 + 1, None, error, str(n), "{}",
                 history, None, None)
            )  # fmt: skip
            if n % 50 == 49:  # a repeat of the previous event's key: a duplicate pointing at its run
                events.append(
                    (f"d{n:010d}", job, "api", "api", at + 1, None, None, "duplicate", rid,
                     f"run key already has run {rid}", None)
                )  # fmt: skip
                sample["duplicates"].append(f"d{n:010d}")
            if n % 997 == 0:
                sample["runs"].append(rid)
                sample["events"].append(eid)
        conn.executemany(f"INSERT INTO events VALUES ({', '.join('?' * 11)})", events)
        conn.executemany(f"INSERT INTO runs VALUES ({', '.join('?' * 22)})", rows)
        if start and start % 200_000 == 0:
            progress(f"{start:,} runs in {time.monotonic() - t0:.0f}s")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    sample["fill_seconds"] = [f"{time.monotonic() - t0:.0f}"]
    return sample


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def calls(sample: dict[str, list[str]], deep_cursor: str) -> list[tuple[str, Callable[[int], str]]]:
    """(row name, i → path): every call the dashboard's pages make, varied per sample."""
    runs, events, dups = sample["runs"], sample["events"], sample["duplicates"]

    def job(i: int) -> str:
        return job_name((i * 7919) % JOBS)

    since = (datetime.now(UTC) - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    return [
        ("whoami (every page)", lambda i: "/api/v1/whoami"),
        ("overview: hour", lambda i: "/api/v1/dashboard/overview?window=hour"),
        ("overview: day", lambda i: "/api/v1/dashboard/overview?window=day"),
        ("readyz (overview health)", lambda i: "/readyz"),
        ("jobs: first page of 50", lambda i: "/api/v1/dashboard/jobs?limit=50"),
        ("jobs: a later page", lambda i: f"/api/v1/dashboard/jobs?limit=50&cursor={job(i)}"),
        ("jobs: name filter", lambda i: f"/api/v1/dashboard/jobs?limit=50&q={i % 100:02d}"),
        ("job page: view", lambda i: f"/api/v1/dashboard/jobs/{job(i)}"),
        ("job page: definition", lambda i: f"/api/v1/jobs/{job(i)}"),
        ("job page: its runs", lambda i: f"/api/v1/runs?job={job(i)}&limit=20"),
        ("runs: first page", lambda i: "/api/v1/runs?limit=50"),
        ("runs: a deep page (cursor)", lambda i: f"/api/v1/runs?limit=50&cursor={deep_cursor}"),
        ("runs: state=failed", lambda i: "/api/v1/runs?limit=50&state=failed"),
        ("runs: job + trigger", lambda i: f"/api/v1/runs?limit=50&job={job(i)}&trigger=api"),
        (
            "runs: job + state + since",
            lambda i: f"/api/v1/runs?limit=50&job={job(i)}&state=succeeded&since={since}",
        ),
        ("run page: run", lambda i: f"/api/v1/runs/{runs[i % len(runs)]}"),
        ("run page: causing event", lambda i: f"/api/v1/events/{events[i % len(events)]}"),
        ("events: first page", lambda i: "/api/v1/events?limit=50"),
        ("events: outcome=duplicate", lambda i: "/api/v1/events?limit=50&outcome=duplicate"),
        ("events: job filter", lambda i: f"/api/v1/events?limit=50&job={job(i)}"),
        ("event page: duplicate", lambda i: f"/api/v1/events/{dups[i % len(dups)]}"),
    ]


def dashboard_api(ctx: Ctx) -> list[Row]:
    from bench.bench_core import Row, loadavg, p50_p99_row, pct  # bench_core imports this module
    from tests.support.server import Server

    runs = RUNS // 10 if ctx.quick else RUNS
    samples = 50 if ctx.quick else 200
    data = ctx.tmp / "data"
    data.mkdir()
    ctx.progress(f"filling the store: {JOBS:,} jobs, {runs:,} runs and their events")
    sample = fill(data / "jobwire.db", runs, ctx.progress)
    ctx.progress(f"filled in {sample['fill_seconds'][0]} s; starting jobwire serve")
    rows: list[Row] = []
    with Server(data) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        page = c.get("/api/v1/runs", params={"limit": 500}).json()
        for _ in range(20):  # 10,000 runs deep
            page = c.get("/api/v1/runs", params={"limit": 500, "cursor": page["next_cursor"]}).json()
        deep = page["next_cursor"]
        worst = 0.0
        for name, path in calls(sample, deep):
            for i in range(5):  # warm-up: the first read of a page from disk is not the steady state
                c.get(path(i))
            xs: list[float] = []
            for i in range(samples):
                t = time.perf_counter()
                r = c.get(path(i))
                xs.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: {path(i)} answered {r.status_code}: {r.text[:200]}")
            worst = max(worst, pct(xs, 0.99))
            rows.append(p50_p99_row(f"dashboard API, {JOBS:,} jobs / {runs:,} runs: {name}", xs, FLOOR_MS))
            ctx.data[name] = {"p50": pct(xs, 0.5), "p99": pct(xs, 0.99), "n": len(xs)}
    ctx.data["load"] = loadavg()
    rows.append(
        Row(
            f"dashboard API: worst p99 of {len(rows)} calls ({samples} each; load {loadavg()})",
            f"{worst * 1000:.1f} ms",
            f"≤ {FLOOR_MS:.0f} ms",
            worst * 1000 <= FLOOR_MS,
        )
    )
    return rows
