"""How fast this machine is, in the two figures the floors depend on, so a table can be read.

The rows' floors were set on this project's 2-core build machine, but the machine a session gets
is not always the same one: the interpreter has measured 43 ns to 128 ns for the same loop, and a
durable commit 65 µs to 257 µs of CPU. A row missed on a machine 2.5× slower says little about the
code; the two figures below, printed beside the table, say which machine it was.

* `interpreter_ns` — the best of 5 `timeit` rounds of `sum((1, 2, 3))` in this interpreter: plain
  CPython speed, what the event loop's Python work scales with. It depends on how the interpreter
  was built as well as on the machine: sessions 12–19 ran pyenv's CPython 3.11.7 (no PGO or LTO);
  from session 20, `make` builds the venv on Debian's 3.11 (PGO + LTO), which reads ~25 % lower on
  the same machine (47.5 against 61.6 ns, alternated, 2026-12-07 13:27). So against `REFERENCE`
  it now says less about the machine than it did.
* `commit_cpu_us` — the CPU (user + system) of one durable SQLite commit of one row with five
  indexes (WAL, `synchronous=FULL`), a bare loop: what every group commit costs at least
  (`python -m bench.commit_floor` prints it with more detail).

`REFERENCE` is what session 12's machine measured, the one where every floor but the CPU per run
held (docs/performance.md, "Session 12").
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import tempfile
import time
import timeit
from typing import NamedTuple

REFERENCE = {"interpreter_ns": 43.4, "commit_cpu_us": 72.0}
"""Session 12's machine: `timeit "sum((1,2,3))"` 43.4 ns, a durable commit 65–72 µs of CPU."""


class Commits(NamedTuple):
    user_us: float
    system_us: float
    wall_us: float

    @property
    def cpu_us(self) -> float:
        return self.user_us + self.system_us


def interpreter_ns() -> float:
    """Best of 5 rounds, as `python -m timeit "sum((1,2,3))"` reports it."""
    timer = timeit.Timer("sum((1, 2, 3))")
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def commit_cost(n: int = 1000, where: str | None = None) -> Commits:
    """`n` durable commits of one row each (a text key, five indexes) in a fresh database under
    `where` (default: the current directory, the disk the bench's data goes to)."""
    folder = tempfile.mkdtemp(prefix="jobwire-commit-floor-", dir=where or os.getcwd())
    try:
        db = sqlite3.connect(os.path.join(folder, "t.db"), isolation_level=None)
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
        shutil.rmtree(folder)
    return Commits(
        (r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6, (t1 - t0) / n * 1e6
    )


def speed(commits: int = 1000) -> dict[str, float]:
    """Both figures, rounded, for the bench's JSON line."""
    return {
        "interpreter_ns": round(interpreter_ns(), 1),
        "commit_cpu_us": round(commit_cost(commits).cpu_us, 1),
    }


def describe(measured: dict[str, float]) -> str:
    """One line: each figure beside the reference machine's, and how many times slower this is."""
    parts = []
    for key, label, unit in (
        ("interpreter_ns", "interpreter (timeit sum((1,2,3)))", "ns"),
        ("commit_cpu_us", "durable commit CPU", "µs"),
    ):
        ref = REFERENCE[key]
        parts.append(f"{label} {measured[key]:g} {unit} ({measured[key] / ref:.1f}× session 12's {ref:g} {unit})")
    return "; ".join(parts)
