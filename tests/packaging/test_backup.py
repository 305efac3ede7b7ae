"""docs/operations.md's backup of the SQLite store while jobwire runs: SQLite's online backup
(`sqlite3 jobwire.db ".backup …"`, Python's `Connection.backup`) and `VACUUM INTO` read a
consistent snapshot beside the running jobwire — its lock is a `flock` on `jobwire.db.lock`, not
an exclusive SQLite lock, and WAL lets a reader go on while it writes — and the copy starts a
jobwire of its own with every run recorded before the backup began."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

JOBS = """
jobs:
  - name: hello
    triggers: [api]
    target: {type: local, command: ["true"]}
"""
BEFORE = 20


def backup_api(db: Path, dest: Path) -> None:
    """What `sqlite3 jobwire.db ".backup dest"` does, through the same SQLite library."""
    src = sqlite3.connect(db, timeout=30)
    out = sqlite3.connect(dest)
    try:
        src.backup(out)
    finally:
        out.close()
        src.close()


def vacuum_into(db: Path, dest: Path) -> None:
    src = sqlite3.connect(db, timeout=30)
    try:
        src.execute("VACUUM INTO ?", (str(dest),))
    finally:
        src.close()


@pytest.mark.parametrize("method", [backup_api, vacuum_into], ids=["backup", "vacuum-into"])
def test_online_backup_while_serving(tmp_path: Path, method: object) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    data = tmp_path / "data"
    with Server(data, jobs) as srv, srv.client() as c:
        before = [c.post("/jobs/hello/runs", json={}).json()["id"] for _ in range(BEFORE)]
        stop = threading.Event()

        def burst() -> None:  # writes go on while the backup reads
            with srv.client() as w:
                while not stop.is_set():
                    w.post("/jobs/hello/runs", json={})

        writer = threading.Thread(target=burst)
        writer.start()
        try:
            eventually_sync(lambda: len(all_runs(c, "hello")) > BEFORE + 5, 30, "the burst to be under way")
            method(data / "jobwire.db", tmp_path / "copy.db")  # type: ignore[operator]
            assert httpx.get(f"{srv.url}/healthz").status_code == 200
        finally:
            stop.set()
            writer.join(30)
    copy = sqlite3.connect(tmp_path / "copy.db")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        copy.close()
    # restore: the copy as the database of a fresh data folder, with the installation's key
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy2(tmp_path / "copy.db", restored / "jobwire.db")
    shutil.copy2(data / "secret.key", restored / "secret.key")
    with Server(restored, jobs) as again, again.client() as c:
        runs = {r["id"]: r for r in all_runs(c, "hello")}
        assert set(before) <= set(runs)
        assert c.post("/jobs/hello/runs", json={}).status_code in (200, 201, 202)
