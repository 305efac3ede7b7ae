"""Defect 12: a full disk must not lose time-trigger fires. `jobwire serve` with its data folder on
a small tmpfs and an every-second interval job: fill the disk, `/readyz` turns 503 naming the
failing store writes with fires pending, free the space, and every scheduled second in between is
recorded exactly once (no gap, no double) and `/readyz` is ready again."""

from __future__ import annotations

import asyncio
import collections
import itertools
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from jobwire.engine.fires import PendingFires
from jobwire.model import Incoming, Job, utcnow
from tests.support.server import Server, all_runs
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.waiting import eventually, eventually_sync

JOBS = """\
jobs:
  - name: tick
    triggers: [{type: interval, interval: 1s}]
    catchup: {policy: all}
    target: {type: local, command: ["true"]}
"""


def readyz(srv: Server) -> tuple[int, dict[str, Any]]:
    r = httpx.get(srv.url + "/readyz", timeout=10)
    return r.status_code, r.json()


def test_fires_missed_while_the_disk_is_full_are_recorded_once_space_returns(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    with small_tmpfs(tmp_path / "disk", "24m") as disk:
        srv = Server(disk / "data", jobs).start()
        try:
            with srv.client() as c:
                eventually_sync(lambda: len(all_runs(c, "tick")) >= 2, 15, "the first fires to be recorded")
                filler = fill(disk)

                def failing() -> dict[str, Any] | None:
                    code, body = readyz(srv)
                    store = body.get("store") or {}
                    if code == 503 and store.get("failing") and store.get("fires_pending", 0) >= 3:
                        return body
                    return None

                body = eventually_sync(failing, 60, "readyz: store writes failing with >= 3 fires pending")
                assert body["status"] == "not ready"
                assert any("store writes are failing" in p for p in body["problems"]), body
                assert "full" in (body["store"]["last_error"] or ""), body  # "database or disk is full"
                metrics = c.get("/metrics").text
                assert "jobwire_store_write_failing 1.0" in metrics
                assert "jobwire_store_write_failures_total" in metrics

                filler.unlink()

                def recovered() -> dict[str, Any] | None:
                    code, body = readyz(srv)
                    return body if code == 200 and body["store"]["fires_pending"] == 0 else None

                body = eventually_sync(recovered, 60, "readyz to be ready with no fires pending")
                assert body["store"]["failing"] is False

                runs = all_runs(c, "tick")
            assert "jobwire_fires_pending 0.0" in httpx.get(srv.url + "/api/v1/metrics").text
        finally:
            srv.stop()
    times = sorted(datetime.fromisoformat(r["scheduled_at"]) for r in runs)
    counts = collections.Counter(times)
    doubled = {t: n for t, n in counts.items() if n > 1}
    assert not doubled, f"scheduled times with two runs: {doubled}"
    assert len({r["key"] for r in runs}) == len(runs)
    expected = [times[0] + timedelta(seconds=i) for i in range(int((times[-1] - times[0]).total_seconds()) + 1)]
    missing = sorted(set(expected) - set(times))
    assert not missing, f"{len(missing)} fires lost of {len(expected)}: {missing[:10]}"


# ---------------------------------------------------------------------------- in process: PendingFires
def tick_job(policy: str, **catchup: Any) -> Job:
    return Job.model_validate(
        {
            "name": "tick",
            "triggers": [{"type": "interval", "interval": "1s"}],
            "catchup": {"policy": policy, **catchup},
            "target": {"type": "local", "command": ["true"]},
        }
    )


async def retried(
    job: Job, fires: int, limit: int = 1000, fail_first: int = 1
) -> tuple[list[Incoming], PendingFires]:
    """Keep `fires` unrecorded fires (the last second first), let the store fail `fail_first`
    retries, then take everything; what was submitted in the end."""
    submitted: list[Incoming] = []
    failures = fail_first

    async def submit(batch: list[Incoming]) -> list[Any]:
        nonlocal failures
        if failures:
            failures -= 1
            return [OSError("database or disk is full")] * len(batch)
        submitted.extend(batch)
        return [object()] * len(batch)

    pending = PendingFires(submit, lambda name: (job, False), limit=limit, backoff_min=0.01, backoff_max=0.02)
    now = utcnow().replace(microsecond=0)
    tid = job.trigger_ids()[0]
    pending.add(
        Incoming(job="tick", trigger=tid, source="interval", scheduled_at=now - timedelta(seconds=fires - i))
        for i in range(fires)
    )
    task = asyncio.create_task(pending.run())
    try:
        await eventually(lambda: not pending and submitted, 10, "the kept fires to be submitted")
    finally:
        task.cancel()
    return submitted, pending


async def test_kept_fires_keep_their_scheduled_times_and_policy_all_takes_each() -> None:
    submitted, pending = await retried(tick_job("all"), 5, fail_first=2)
    times = [inc.scheduled_at for inc in submitted]
    assert len(times) == 5 == len(set(times)) and times == sorted(times)
    assert {inc.source for inc in submitted} == {"interval"}
    assert pending.recorded == 5 and pending.given_up == 0


async def test_kept_fires_follow_latest_and_max() -> None:
    submitted, pending = await retried(tick_job("latest"), 5)
    assert len(submitted) == 1 and pending.given_up == 4
    newest = submitted[0].scheduled_at
    submitted, _ = await retried(tick_job("all", max=2), 5)
    assert len(submitted) == 2 and newest not in {i.scheduled_at for i in submitted}  # the first `max`


async def test_kept_fires_of_a_skip_job_are_given_up() -> None:
    submitted: list[Incoming] = []

    async def submit(batch: list[Incoming]) -> list[Any]:
        submitted.extend(batch)
        return [object()] * len(batch)

    job = tick_job("skip")
    pending = PendingFires(submit, lambda name: (job, False), backoff_min=0.01)
    pending.add([Incoming(job="tick", trigger=job.trigger_ids()[0], source="interval", scheduled_at=utcnow())])
    task = asyncio.create_task(pending.run())
    try:
        await eventually(lambda: pending.given_up == 1, 10, "the fire to be given up")
    finally:
        task.cancel()
    assert not submitted and not pending


async def test_beyond_the_bound_a_trigger_catches_up_instead() -> None:
    submitted, pending = await retried(tick_job("all"), 8, limit=3)
    times = sorted(inc.scheduled_at for inc in submitted)
    # 3 kept one by one, then the trigger switched to catch-up from its earliest unrecorded time:
    # every second from it to now, none twice
    assert len(times) == len(set(times)) >= 8
    assert all((b - a) == timedelta(seconds=1) for a, b in itertools.pairwise(times))
    assert len(pending) == 0 and pending.overflowed == 0
