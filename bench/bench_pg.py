"""The PostgreSQL rows of issue 9 that bench_core's SQLite sections have too, and CPU accounting for
every PostgreSQL row (bench_replicas.py uses it as well).

Each row on a fresh database `jwbench_<uuid>` (bench_replicas.database(): created on ADMIN_DSN =
JOBWIRE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres, dropped afterwards),
with `jobwire serve` as a process (tests/support/server.py), as users run it.

* `trigger --store postgres` (section `trigger-postgres`): bench_core.trigger_to_start on a serve
  whose store is that database (JOBWIRE_DATABASE_URL);
* `cron-every-second --store postgres` (section `cron-every-second-postgres`): 1,000 jobs
  `* * * * * *` in a job file (JOBWIRE_JOBS), each an `http` job calling bench/httpsink.py (so
  every fire is launched and finished without spawning 1,000 processes a second on 2 cores). Fire
  lateness = the run's `started_at` − its event's `scheduled_at` as recorded in PostgreSQL (the
  event's `received_at` is when it was recorded, ahead of the due time by default); missed = (job, second)
  of the window with no recorded run; due → start = the call's arrival at the sink − due time.

CPU: `CpuMeter` reads utime + stime (/proc/PID/stat, every thread) of the `jobwire serve`
processes, of the PostgreSQL backends connected to the bench's database (pg_stat_activity; the
same machine), and of this process (the bench client), at the start and the end of a window.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench_core import Ctx, Row

TICK = os.sysconf("SC_CLK_TCK")


def pid_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def backend_pids(url: str) -> list[int]:
    """The PostgreSQL backends connected to `url`'s database (this query's own excepted)."""
    import asyncpg  # type: ignore[import-untyped]

    async def go() -> list[int]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [int(r[0]) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(go())


class CpuMeter:
    """CPU seconds used between `start()` and `stop()` by: the serve processes, the PostgreSQL
    backends of the database (those connected at either end; one that came and went in between
    is missed), and this process."""

    def __init__(self, url: str | None, serve_pids: list[int]) -> None:
        """`url`: the bench's PostgreSQL database (None: no PostgreSQL, e.g. a SQLite row)."""
        self.url = url
        self.serve_pids = serve_pids
        self.serve = self.postgres = self.client = 0.0
        self.backends = 0
        self._t0: dict[int, float] = {}
        self._b0: dict[int, float] = {}
        self._c0 = 0.0
        self._w0 = 0.0
        self.wall = 0.0

    def _read(self, pids: list[int]) -> dict[int, float]:
        return {p: c for p in pids if (c := pid_cpu(p)) is not None}

    def _backends(self) -> list[int]:
        return backend_pids(self.url) if self.url else []

    def start(self) -> None:
        self._b0 = self._read(self._backends())
        self._t0 = self._read(self.serve_pids)
        self._c0 = time.process_time()
        self._w0 = time.monotonic()

    def stop(self) -> CpuMeter:
        self.wall = time.monotonic() - self._w0
        self.client = time.process_time() - self._c0
        serve1 = self._read(self.serve_pids)
        self.serve = sum(c - self._t0.get(p, 0.0) for p, c in serve1.items())
        b1 = self._read(self._backends())
        self.backends = len(b1)
        # a backend that connected during the window: all its CPU is the window's
        self.postgres = sum(c - self._b0.get(p, 0.0) for p, c in b1.items())
        return self

    def per_run(self, runs: int) -> dict[str, float]:
        """µs of CPU per run: serve, postgres, client, total."""
        n = max(runs, 1)
        out = {"serve": self.serve, "postgres": self.postgres, "client": self.client}
        per = {k: v / n * 1e6 for k, v in out.items()}
        per["total"] = sum(per.values())
        return per

    def as_data(self, runs: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "wall_s": self.wall,
            "serve_cpu_s": self.serve,
            "postgres_cpu_s": self.postgres,
            "client_cpu_s": self.client,
            "postgres_backends": self.backends,
        }
        if runs is not None:
            data["cpu_us_per_run"] = self.per_run(runs)
        return data

    def shares(self) -> str:
        w = max(self.wall, 1e-9)
        return (
            f"serve {self.serve / w:.0%}, PostgreSQL {self.postgres / w:.0%}, "
            f"bench client {self.client / w:.0%} of a core"
        )


def database_url(env: dict[str, str]) -> str | None:
    """The database of a `serve_env` (None for SQLite)."""
    return env.get("JOBWIRE_DATABASE_URL")


@contextmanager
def serve_env(ctx: Ctx) -> Iterator[dict[str, str]]:
    """The settings a `jobwire serve` needs for the section's store: none for SQLite (its data
    folder), a fresh database for PostgreSQL, dropped afterwards."""
    if ctx.store != "postgres":
        yield {}
        return
    from bench.bench_replicas import database

    with database() as url:
        ctx.data["database"] = url.rpartition("/")[2]
        yield {"JOBWIRE_DATABASE_URL": url, "JOBWIRE_DB_AUTO_MIGRATE": "true"}


def _sql_rows(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    import asyncpg

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return [tuple(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


# --------------------------------------------------------------------------- 1,000 every second


def cron_every_second_pg(ctx: Ctx) -> list[Row]:
    """1,000 `* * * * * *` http jobs from a job file, `jobwire serve` on PostgreSQL."""
    from bench.bench_core import Row, loadavg, ms, p50_p99_row, settle, summary
    from bench.bench_e2e import Sink, http_job, own_cores
    from tests.support.server import Server

    ctx.store = "postgres"
    n_jobs, window = (1000, 5) if ctx.quick else (1000, 10)
    base = ctx.tmp / "cron1-pg"
    base.mkdir(parents=True)
    settle(ctx)
    with Sink() as sink, serve_env(ctx) as env:
        url = env["JOBWIRE_DATABASE_URL"]
        jobs = [
            http_job(f"sec-{i:04d}", sink, triggers=[{"cron": "* * * * * *"}], catchup={"policy": "skip"})
            for i in range(n_jobs)
        ]
        jobfile = base / "jobs.yaml"
        jobfile.write_text("jobs:\n" + "".join(f"  - {json.dumps(j)}\n" for j in jobs))
        t_start = time.time()
        with Server(base / "data", jobfile, JOBWIRE_SHUTDOWN_GRACE="1s", **env) as srv:
            assert srv.proc is not None and sink.proc is not None
            ready = time.time() - t_start
            cores = own_cores(srv.proc.pid, sink.proc.pid)  # as the e2e every-second rows: see there
            w0 = math.ceil(time.time()) + 3
            w1 = w0 + window
            ctx.progress(
                f"serve ready in {ready:.1f}s; {n_jobs:,} jobs every second on PostgreSQL, http → sink; "
                f"{cores or 'cores shared'}; {window}s window after warm-up; load {loadavg()}"
            )
            time.sleep(max(0.0, w0 - time.time()))
            meter = CpuMeter(url, [srv.proc.pid])
            meter.start()
            time.sleep(max(0.0, w1 - time.time()))
            meter.stop()
            time.sleep(3)  # the window's last calls
            load = loadavg()
            rows = _sql_rows(
                url,
                "SELECT e.job, extract(epoch FROM e.scheduled_at)::float8, "
                "extract(epoch FROM r.started_at - e.scheduled_at)::float8, e.outcome, r.id "
                "FROM events e LEFT JOIN runs r ON r.id = e.run_id "
                "WHERE e.source = 'cron' AND e.scheduled_at >= to_timestamp($1) AND e.scheduled_at < to_timestamp($2)",
                float(w0),
                float(w1),
            )
            arrived = sink.arrivals()
    late = [float(r[2]) for r in rows if r[2] is not None]
    made = {(r[0], round(r[1])) for r in rows if r[3] == "run" and r[4] is not None}
    dues = {r[4]: float(r[1]) for r in rows if r[4] is not None}
    started = [arrived[rid] - d for rid, d in dues.items() if rid in arrived]
    expected = n_jobs * window
    missed = expected - len(made)
    fires = len(rows)
    ctx.data["every_second_postgres"] = {
        "jobs": n_jobs,
        "window_s": window,
        "expected_fires": expected,
        "events": fires,
        "missed": missed,
        "fire_lateness": summary(late),
        "due_to_start": summary(started),
        "serve_ready_s": ready,
        "cpu": meter.as_data(fires),
        "load": load,
        "cores": cores or "shared",
    }
    where = "far end on its own core" if cores else "far end sharing the cores"
    row = p50_p99_row(
        f"cron 1,000 × every second on PostgreSQL ({window}s; serve, job file, http → sink, {where}): "
        "due → run started (p50 / p99)",
        late,
        10,
    )
    per = meter.per_run(fires)
    return [
        row._replace(value=row.value + f", max {ms(max(late)) if late else 'n/a'} ms", ok=bool(row.ok) and missed == 0),
        Row(f"  … fires with no run recorded, of {expected:,}", f"{missed}", "0", missed == 0),
        p50_p99_row(f"  … due → HTTP job start (call arrives), {len(started):,} calls", started, None),
        Row(
            "  … CPU during the window (per fire: serve / PostgreSQL backends)",
            f"{meter.shares()}; {per['serve']:.0f} / {per['postgres']:.0f} µs",
            "—",
            None,
        ),
    ]
