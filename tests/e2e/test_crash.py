"""kill -9 during a burst of 1,000 API-triggered runs with idempotency keys, restart, replay every
request: each request has exactly one run — none lost, none doubled — and no process ran twice."""

from __future__ import annotations

import asyncio
import collections
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

N = 1000
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}


def jobs_file(tmp_path: Path, ledger: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"""
jobs:
  - name: burst
    target:
      type: local
      shell: true
      command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'
"""
    )
    return path


async def fire(url: str, keys: list[str], kill_after: int | None, on_kill: object) -> dict[str, str]:
    """POST one run per key (50 in flight); returns key → run id for every acknowledged request."""
    acked: dict[str, str] = {}
    sem = asyncio.Semaphore(50)
    killed = asyncio.Event()

    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=10) as client:

        async def one(key: str) -> None:
            async with sem:
                if killed.is_set():
                    return
                try:
                    r = await client.post("/jobs/burst/runs", json={}, headers={"Idempotency-Key": key})
                except httpx.HTTPError:
                    return  # the server died under this request: not acknowledged
                if r.status_code in (200, 201):
                    acked[key] = r.json()["id"]
                if kill_after is not None and len(acked) >= kill_after and not killed.is_set():
                    killed.set()
                    on_kill()  # type: ignore[operator]

        await asyncio.gather(*(one(k) for k in keys))
    return acked


@pytest.mark.slow
def test_kill9_during_burst_then_replay(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    jobs = jobs_file(tmp_path, ledger)
    data = tmp_path / "data"
    keys = [f"req-{i:04d}" for i in range(N)]

    srv = Server(data, jobs).start()
    before = asyncio.run(fire(srv.url, keys, kill_after=N // 3, on_kill=srv.kill9))
    if srv.proc and srv.proc.poll() is None:
        srv.kill9()
    assert len(before) >= N // 3

    srv = Server(data, jobs, port=srv.port).start()
    try:
        after = asyncio.run(fire(srv.url, keys, kill_after=None, on_kill=None))
        assert len(after) == N, "every replayed request is answered"
        for key, run_id in before.items():
            assert after[key] == run_id, f"{key}: acknowledged before the crash as {run_id}, now {after[key]}"

        with srv.client() as c:

            runs = eventually_sync(
                lambda: (r := all_runs(c, "burst")) and all(x["state"] in TERMINAL for x in r) and r, 120, "all runs to end"
            )
        assert len(runs) == N, f"{len(runs)} runs for {N} requests"
        assert len({r["key"] for r in runs}) == N
        assert {r["id"] for r in runs} == set(after.values())
        counts = collections.Counter(ledger.read_text().split())
        doubled = {rid: n for rid, n in counts.items() if n > 1}
        assert not doubled, f"processes ran twice: {doubled}"
        states = collections.Counter(r["state"] for r in runs)
        # a run whose process had started when the server died is recorded as lost, never run again blindly
        lost = [r for r in runs if r["state"] == "failed"]
        assert all((r["error"] or {}).get("reason") == "Lost" for r in lost), states
        assert states["succeeded"] + len(lost) == N
        assert len(counts) >= states["succeeded"]
    finally:
        srv.stop()
        print(srv.output()[-2000:], file=sys.stderr)
