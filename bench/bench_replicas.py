"""Replicas on PostgreSQL (docs/replicas.md): `python -m bench.bench_replicas [--quick]`, or `run()`
from bench/__main__.py. Each row on a fresh database `jwbench_<uuid>` (dropped afterwards), with real
`jobwire serve` processes (tests/support/server.py).

- leader failover (kill -9) → next fire by the new leader: three replicas with the default lease
  (10 s, renewed every 3 s), one every-second cron; the leader is killed with SIGKILL at wall time
  t_k; the row is the `received_at` of the first fire recorded after t_k minus t_k. Floor: lease + 5 s.
- runs recorded per second on PostgreSQL, 1 and 3 replicas: 32 keep-alive connections (raw HTTP,
  bench_core's client) POST /jobs/sink/runs spread over the replicas — and for 3 replicas also 96
  (32 per replica, what the one replica gets in its row); the runs queue behind one running `sleep`
  per replica (bench_core.SINK_JOB), so the row measures intake and durable recording; counted from
  201 answers over the window and checked against the database. Beside each: the CPU per recorded
  run of the serve processes, the PostgreSQL backends of the database and the bench client over the
  window (bench_pg.CpuMeter), and the runs/s two cores could record at that cost.

The issue's floors: ≥ 3,000/s with 1 replica, ≥ 5,000/s with 3 together. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import yaml

from bench.bench_core import SINK_JOB, Row, http_request, loadavg, raw_async_conn, raw_async_send
from tests.support.server import Server

ADMIN_DSN = os.environ.get("JOBWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
LEASE = 10.0


def _sql(dsn: str, query: str) -> Any:
    """One statement on `dsn`; its first value."""
    import asyncpg  # type: ignore[import-untyped]

    async def go() -> Any:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(go())


def _admin(query: str) -> Any:
    return _sql(ADMIN_DSN, query)


@contextmanager
def database() -> Iterator[str]:
    name = f"jwbench_{uuid.uuid4().hex[:16]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _replicas(base: Path, url: str, n: int, jobs: Path | None = None) -> list[Server]:
    env = {"JOBWIRE_DATABASE_URL": url, "JOBWIRE_DB_AUTO_MIGRATE": "true", "JOBWIRE_SHUTDOWN_GRACE": "0.2s"}
    base.mkdir(parents=True, exist_ok=True)
    servers = [Server(base / f"r{i}", jobs, **env) for i in range(n)]
    for s in servers:
        s.start(timeout=60)
    return servers


def _stop(servers: list[Server]) -> None:
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.stop()


def _leader(servers: list[Server]) -> Server | None:
    for s in servers:
        if s.proc is None or s.proc.poll() is not None:
            continue
        try:
            if httpx.get(f"{s.url}/readyz", timeout=2).json().get("replica", {}).get("leader"):
                return s
        except (httpx.HTTPError, ValueError):
            continue
    return None


def _wait(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s")


def _first_fire_after(url: str, t_kill: float) -> float | None:
    found = _sql(
        url,
        "SELECT extract(epoch FROM min(received_at)) FROM events WHERE job = 'tick' AND received_at > "
        f"to_timestamp({t_kill})",
    )
    return None if found is None else float(found)


def failover(base: Path, samples: int) -> list[Row]:
    base.mkdir(parents=True, exist_ok=True)
    jobs = base / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": [{
        "name": "tick", "triggers": [{"cron": "* * * * * *"}], "target": {"type": "local", "command": ["true"]},
    }]}))  # fmt: skip
    delays: list[float] = []
    with database() as url:
        servers = _replicas(base, url, 3, jobs)
        try:
            for i in range(samples):
                leader = _wait(lambda: _leader(servers), 30)
                _wait(lambda: _first_fire_after(url, time.time() - 1.5), 10)  # it fires
                t_kill = time.time()
                leader.kill9()
                at = _wait(lambda t=t_kill: _first_fire_after(url, t), LEASE + 30)
                delays.append(at - t_kill)
                restarted = Server(leader.data_dir, jobs, port=leader.port, **leader.env)
                servers[servers.index(leader)] = restarted
                restarted.start(timeout=60)
                print(f"  failover {i + 1}: next fire {at - t_kill:.2f}s after kill -9", flush=True)
        finally:
            _stop(servers)
    worst = max(delays)
    value = f"{worst:.1f} s worst of {len(delays)} ({', '.join(f'{d:.1f}' for d in delays)})"
    return [Row("leader failover (kill -9, lease 10 s) → next fire by the new leader", value,
                f"≤ {LEASE + 5:.0f} s", worst <= LEASE + 5)]  # fmt: skip


def recorded_per_second(
    base: Path, replicas: int, seconds: float, conc: int = 32
) -> tuple[list[Row], dict[str, Any]]:
    """The row, and a context row: CPU per recorded run in the serve processes, the PostgreSQL
    backends of the database and the bench client, over the measured window (bench_pg.CpuMeter)."""
    from bench.bench_pg import CpuMeter

    with database() as url:
        servers = _replicas(base / f"tput{replicas}-{conc}", url, replicas)
        try:
            # defined over every replica's API (each replica also learns it through the catalogue)
            for s in servers:
                with s.client() as c:
                    c.put("/jobs/sink", json=SINK_JOB).raise_for_status()
            ports = [s.port for s in servers]
            meter = CpuMeter(url, [s.proc.pid for s in servers if s.proc is not None])
            count, errors, rate, counted = asyncio.run(_produce(ports, conc, seconds, meter))
            stored = int(_sql(url, "SELECT count(*) FROM runs"))
        finally:
            _stop(servers)
    floor = 3000 if replicas == 1 else 5000
    per = meter.per_run(counted)
    plural = "s" if replicas > 1 else ""
    conns = f"{conc} conns" if replicas == 1 or conc % replicas else f"{conc} conns, {conc // replicas} per replica"
    rows = [
        Row(
            f"runs recorded per second on PostgreSQL, {replicas} replica{plural} (HTTP, {conns})",
            f"{rate:,.0f} /s", f"≥ {floor:,} /s", rate >= floor and stored >= count and not errors,
        ),
        Row(
            f"  … CPU per recorded run, {replicas} replica{plural}: serve / PostgreSQL / bench client "
            "(→ runs/s 2 cores could do)",
            f"{per['serve']:.0f} / {per['postgres']:.0f} / {per['client']:.0f} µs "
            f"(→ {2e6 / per['total']:,.0f} /s)",
            "—",
            None,
        ),
    ]  # fmt: skip
    data = {
        "acknowledged": count, "errors": errors, "runs_in_db": stored, "rate": rate,
        "cpu": meter.as_data(counted), "load": loadavg(),
    }  # fmt: skip
    return rows, data


async def _produce(
    ports: list[int], conc: int, seconds: float, meter: Any = None
) -> tuple[int, dict[int, int], float, int]:
    """(201s, errors by status, runs/s over the window, 201s in the window); `meter` is started
    and stopped around the window (its blocking reads take a few ms of the window's wall time)."""
    count = 0
    errors: dict[int, int] = {}
    stop_at = time.time() + 1 + seconds
    request = http_request("POST", "/api/v1/jobs/sink/runs")

    async def producer(port: int) -> None:
        nonlocal count
        reader, writer = await raw_async_conn(port)
        try:
            while time.time() < stop_at:
                status = await raw_async_send(reader, writer, request)
                if status == 201:
                    count += 1
                else:
                    errors[status] = errors.get(status, 0) + 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(producer(ports[i % len(ports)])) for i in range(conc)]
    await asyncio.sleep(1)
    if meter is not None:
        await asyncio.to_thread(meter.start)
    c0, t0 = count, time.time()
    await asyncio.sleep(seconds)
    c1, t1 = count, time.time()
    if meter is not None:
        await asyncio.to_thread(meter.stop)
    await asyncio.gather(*tasks)
    return count, errors, (c1 - c0) / (t1 - t0), c1 - c0


def run(quick: bool = False, failovers: bool = True, sizes: tuple[int, ...] = (1, 3)) -> list[Row]:
    rows: list[Row] = []
    with TemporaryDirectory(prefix="jobwire-bench-replicas-") as tmp:
        base = Path(tmp)
        print(f"▶ replicas: load average {loadavg()}", flush=True)
        if failovers:
            rows += failover(base / "failover", 1 if quick else 3)
        for n in sizes:
            # 32 connections over the replicas; with several, also 32 per replica (the offered
            # load one replica gets in the 1-replica row: its group commits are as large)
            for conc in (32,) if n == 1 else (32, 32 * n):
                got, data = recorded_per_second(base, n, 3.0 if quick else 10.0, conc)
                print(f"  {got[0].name}: {got[0].value}; {got[1].value} {data}", flush=True)
                rows += got
        print(f"  load average after {loadavg()}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_replicas", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-failover", action="store_true", help="only the runs-recorded rows")
    parser.add_argument(
        "--replicas", type=int, action="append", help="runs-recorded row with this many replicas (repeatable; default 1 and 3)"
    )
    args = parser.parse_args()
    started = datetime.now().isoformat(timespec="seconds")
    rows = run(args.quick, not args.no_failover, tuple(args.replicas or (1, 3)))
    for r in rows:
        mark = "—" if r.ok is None else ("ok" if r.ok else "BELOW")
        print(f"{r.name:<90} {r.value:>34} {r.floor:>12} {mark}")
    print(json.dumps({"bench": "replicas", "started": started, "rows": [r._asdict() for r in rows]}))


if __name__ == "__main__":
    main()
