"""What one durable SQLite commit costs at least on this machine: a bare Python loop committing one
row (a text key and five indexes) per transaction, WAL, `synchronous=FULL` — the CPU floor of a
run that is its own commit (the one-producer row of `e2e-throughput`), not a jobwire row.

    .venv/bin/python -m bench.commit_floor [--n 3000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    n = ap.parse_args().n
    where = tempfile.mkdtemp(prefix="jobwire-commit-floor-", dir=os.getcwd())
    try:
        db = sqlite3.connect(os.path.join(where, "t.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, a TEXT, b INTEGER)")
        for i, cols in enumerate(["b, a", "b, a, id", "a, b, id", "a, id", "id, b"]):
            db.execute(f"CREATE INDEX i{i} ON t ({cols})")
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
        for i in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?, ?)", (os.urandom(8).hex(), "x" * 100, i))
            db.execute("COMMIT")
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.time()
        db.close()
    finally:
        shutil.rmtree(where)
    user, system = (r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6
    print(
        f"{n:,} commits: CPU {user + system:.0f} µs each (user {user:.0f}, system {system:.0f}), "
        f"wall {(t1 - t0) / n * 1e6:.0f} µs each"
    )


if __name__ == "__main__":
    main()
