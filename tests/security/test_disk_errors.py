"""Defect 11 (disk): a data folder that cannot be written — read-only, a file in its place, a full
disk at start or at stop — ends `jobwire serve` with one clear line naming the folder, the setting
and what to do, exit code 1, and no traceback. Real failures on a small tmpfs (see tests/support/tmpfs.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from jobwire.config import Settings
from jobwire.engine import Engine
from tests.support.server import Server, free_port
from tests.support.tmpfs import fill, remount, small_tmpfs
from tests.support.waiting import eventually_sync

SLEEPY = """\
jobs:
  - name: sleepy
    triggers: [{type: api}]
    target: {type: local, command: ["sleep", "60"]}
"""


def serve(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    full.update(
        JOBWIRE_DATA_DIR=str(data_dir), JOBWIRE_PORT=str(free_port()), JOBWIRE_LOG_LEVEL="error", **env
    )
    return subprocess.run(
        [sys.executable, "-m", "jobwire", "serve"], env=full, capture_output=True, text=True, timeout=60
    )


def test_a_file_where_the_data_folder_should_be(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    done = serve(blocker)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {blocker}/logs: a file is where a folder should be: move it away, "
        f"or set JOBWIRE_DATA_DIR (now {blocker}) to a folder"
    ]


def test_read_only_data_folder_at_start(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        assert serve_once(disk)  # a data folder that worked before (Server logs beside it), then read-only
        remount(disk, "ro")
        try:
            for data_dir in (disk / "new", disk):
                done = serve(data_dir)
                assert done.returncode == 1, done.stderr
                (line,) = done.stderr.splitlines()
                assert (
                    line.startswith("error: ")
                    and "is on a read-only file system: set JOBWIRE_DATA_DIR" in line
                )
                assert f"(now {data_dir}) or remount it read-write" in line
        finally:
            remount(disk, "rw")


def serve_once(data_dir: Path) -> bool:
    """Make `data_dir` as a first start does (in-process: a server start would only add seconds)."""

    async def once() -> bool:
        engine = Engine(Settings(data_dir=data_dir))
        await engine.start()
        await engine.stop()
        return (data_dir / "jobwire.db").exists()

    return asyncio.run(once())


def test_full_disk_at_restart(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data", size="2m") as data_dir:  # Server logs beside it, not on it
        assert serve_once(data_dir)
        fill(data_dir)
        done = serve(data_dir)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            f"error: cannot open {data_dir / 'jobwire.db'}: disk I/O error (the disk holding it is full: "
            f"free space in {data_dir}, JOBWIRE_DATA_DIR, and start again)"
        ]


def test_first_start_on_a_full_disk(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", size="64k") as disk:
        (disk / "data").mkdir()
        fill(disk)
        done = serve(disk / "data")
        assert done.returncode == 1
        key = disk / "data" / "secret.key"
        assert done.stderr.splitlines() == [
            f"error: cannot write {key}: No space left on device: free space on the disk holding "
            f"{disk / 'data'} and start again"
        ]
        assert not key.exists()


def test_stop_while_the_disk_is_full(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data", size="2m") as data_dir:  # Server logs beside it, not on it
        jobs = tmp_path / "jobs.yaml"
        jobs.write_text(SLEEPY)
        server = Server(data_dir, jobs=jobs, JOBWIRE_SHUTDOWN_GRACE="1s").start()
        try:
            with server.client() as c:
                run = c.post("/jobs/sleepy/runs", json={}).json()
                eventually_sync(
                    lambda: c.get(f"/runs/{run['id']}").json()["state"] == "running", 10, "running"
                )
            filler = fill(data_dir)
            code = server.stop()
        finally:
            if server.proc and server.proc.poll() is None:
                server.proc.kill()
        out = server.output()
        assert code == 1, out
        assert "Traceback" not in out
        assert out.splitlines()[-1] == (
            "error: jobwire stopped, but 1 run state could not be saved "
            f"({data_dir / 'jobwire.db'}: database or disk is full); the next start reconciles "
            f"those runs from what was saved: free space in {data_dir} (JOBWIRE_DATA_DIR) first"
        )
        filler.unlink()
        with server, server.client() as c:  # space is back (entering starts it): the run is reconciled
            final = eventually_sync(
                lambda: (
                    (r := c.get(f"/runs/{run['id']}").json())["state"] not in ("pending", "running") and r
                ),
                20,
                "the run to be reconciled",
            )
            assert final["state"] in ("interrupted", "lost", "failed"), final
