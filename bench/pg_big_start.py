"""Does a replica with many jobs survive its start on PostgreSQL? `jobwire serve` on a fresh database
`jwbench_<uuid>` with N cron jobs in job files (20 files of 5,000 for 100,000), the given heartbeat
expiry: time to `/readyz`, then whether it is still up `--watch` seconds later — for a first start
and a restart. Before session 15 a replica with 100,000 jobs and the default expiry (10 s) exited
with status 75 ("declared dead") right after it became ready (docs/replicas.md).

    .venv/bin/python -m bench.pg_big_start [--jobs 100000] [--expiry 10] [--watch 20]

Not part of `python -m bench`: a first start and a restart of 100,000 jobs on PostgreSQL take ~16 s
each here, over a minute in all with the 20 s watches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_replicas import database
from tests.support.server import Server

PER_FILE = 5_000


def write_jobs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(0, n, PER_FILE):
        jobs = [
            {
                "name": f"s{i:06d}",
                "triggers": [{"cron": f"{i % 60} 3 * * *"}],
                "target": {"type": "local", "command": ["true"]},
                "catchup": {"policy": "skip"},
            }
            for i in range(f, min(f + PER_FILE, n))
        ]
        (folder / f"jobs-{f // PER_FILE:02d}.yaml").write_text(json.dumps({"jobs": jobs}))


def start_and_watch(server: Server, watch: float) -> str:
    """Start `server`, then say when it was ready and whether it was still up `watch` seconds later."""
    t0 = time.monotonic()
    try:
        server.start(timeout=600)
    except RuntimeError:  # it exited (or never answered) before it was ready
        return f"never ready; exited with status {server.proc.poll() if server.proc else None}"
    ready = time.monotonic() - t0
    assert server.proc is not None
    try:
        server.proc.wait(watch)
    except subprocess.TimeoutExpired:
        server.stop(120)
        return f"ready after {ready:.1f} s; still up {watch:g} s after ready"
    return f"ready after {ready:.1f} s; exited with status {server.proc.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--expiry", type=float, default=10.0, help="JOBWIRE_HEARTBEAT_EXPIRY_SECONDS")
    ap.add_argument("--watch", type=float, default=20.0)
    a = ap.parse_args()
    with database() as url, tempfile.TemporaryDirectory(prefix="jobwire-pg-big-") as tmp:
        folder = Path(tmp) / "jobs"
        write_jobs(folder, a.jobs)
        env = {
            "JOBWIRE_DATABASE_URL": url,
            "JOBWIRE_DB_AUTO_MIGRATE": "true",
            "JOBWIRE_HEARTBEAT_EXPIRY_SECONDS": f"{a.expiry:g}",
        }
        for attempt in ("first start", "restart"):
            server = Server(Path(tmp) / "data", folder, **env)
            result = start_and_watch(server, a.watch)
            print(f"{attempt}, {a.jobs:,} jobs, heartbeat expiry {a.expiry:g} s: {result}")
            for line in server.output().splitlines():
                if "declared dead" in line:
                    print(f"  {line[:160]}")


if __name__ == "__main__":
    main()
