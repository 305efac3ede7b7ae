"""Two scheduler replicas on one fresh PostgreSQL database and two runners on one RabbitMQ vhost
(`jobwire serve` subprocesses): a burst of runs triggered over both schedulers' APIs — every run
ends exactly once, every `Idempotency-Key` the far end sees is a recorded run's id; then the same
with one scheduler killed with -9 mid-burst, its runs taken over by the other."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_fleet import TERMINAL, fire, jobs_file
from tests.support.brokers import RABBIT, RabbitVhost, need
from tests.support.fleet import KeyServer, metric, runner, scheduler
from tests.support.pgdb import create_database, drop_database
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

REPLICAS = {
    "JOBWIRE_DB_AUTO_MIGRATE": "true",
    "JOBWIRE_LEASE_SECONDS": "3",
    "JOBWIRE_LEASE_RENEW_SECONDS": "1",
    "JOBWIRE_HEARTBEAT_EXPIRY_SECONDS": "3",
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[str, RabbitVhost]]:
    need(RABBIT, "RabbitMQ")
    name, url = asyncio.run(create_database())
    vhost = RabbitVhost()
    try:
        yield url, vhost
    finally:
        vhost.delete()
        asyncio.run(drop_database(name))


def schedulers(tmp_path: Path, jobs: Path, db: str, vhost: RabbitVhost) -> tuple[Server, Server]:
    env = {"JOBWIRE_DATABASE_URL": db, **REPLICAS}
    return (
        scheduler(tmp_path / "a", jobs, vhost.url, **env),
        scheduler(tmp_path / "b", jobs, vhost.url, **env),
    )


async def fire_both(urls: list[str], keys: list[str]) -> dict[str, str]:
    """Each key over one of the schedulers' APIs, in turn."""
    parts = await asyncio.gather(*(fire(u, keys[i :: len(urls)]) for i, u in enumerate(urls)))
    return {k: v for part in parts for k, v in part.items()}


def ended_runs(srv: Server, ids: set[str], timeout: float = 180) -> list[dict[str, Any]]:
    last: list[str] = []
    with srv.client() as c:

        def done() -> list[dict[str, Any]] | None:
            try:
                runs = [r for r in all_runs(c, "call") if r["id"] in ids]
            except httpx.TransportError as exc:  # a loaded machine: asked again, within the deadline
                last[:] = [f"{type(exc).__name__}: {exc}"]
                return None
            states = collections.Counter(str(r["state"]) for r in runs)
            last[:] = [f"{len(runs)} of {len(ids)} recorded, states {dict(states)}"]
            return runs if len(runs) == len(ids) and all(r["state"] in TERMINAL for r in runs) else None

        try:
            return eventually_sync(done, timeout=timeout, what=f"{len(ids)} runs ended")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last}") from None


def check_once(runs: list[dict[str, Any]], hook: KeyServer, doubles_allowed: bool) -> None:
    ids = {str(r["id"]) for r in runs}
    bad = [(r["id"], r["state"], r["error"]) for r in runs if r["state"] != "succeeded"]
    assert not bad, bad[:3]
    for r in runs:
        ends = [h["state"] for h in r["history"] if h["state"] in TERMINAL]
        assert ends == ["succeeded"], f"{r['id']} ended {ends}"
    seen = collections.Counter(hook.keys())
    assert set(seen) == ids, (
        f"every key the far end saw is a recorded run's id ({len(set(seen) - ids)} not), "
        f"every run was called ({len(ids - set(seen))} not)"
    )
    if not doubles_allowed:
        assert max(seen.values()) == 1, "no call twice"


@pytest.mark.timeout(300)
def test_two_schedulers_and_two_runners(tmp_path: Path, world: tuple[str, RabbitVhost]) -> None:
    db, vhost = world
    n = 300
    with KeyServer(delay=0.02) as hook:
        a, b = schedulers(tmp_path, jobs_file(tmp_path, hook.url), db, vhost)
        with runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url), a, b:
            acked = asyncio.run(fire_both([a.url, b.url], [f"k{i}" for i in range(n)]))
            assert len(acked) == n
            runs = ended_runs(a, set(acked.values()), timeout=120)
            check_once(runs, hook, doubles_allowed=False)
            forwarded = sum(metric(s.url, "jobwire_fleet_results_forwarded_total") for s in (a, b))
            assert forwarded > 0, "results reached the replica not holding their run, and went on"


@pytest.mark.timeout(300)
def test_a_scheduler_killed_mid_burst_is_taken_over(tmp_path: Path, world: tuple[str, RabbitVhost]) -> None:
    db, vhost = world
    n = 300
    # calls of 0.2 s (32 slots: 160 runs/s), so runs are in flight when the scheduler dies
    with KeyServer(delay=0.2) as hook:
        victim, survivor = schedulers(tmp_path, jobs_file(tmp_path, hook.url), db, vhost)
        with runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url), survivor:
            victim.start()
            try:
                acked: dict[str, str] = {}
                keys = [f"k{i}" for i in range(n)]
                burst = threading.Thread(
                    target=lambda: acked.update(asyncio.run(fire_both([victim.url, survivor.url], keys)))
                )
                burst.start()
                try:
                    eventually_sync(lambda: len(hook.keys()) >= n // 4, timeout=60, what="a quarter called")
                    victim.kill9()
                    called_at_kill = len(hook.keys())
                finally:
                    burst.join()
            finally:
                victim.stop()
            assert called_at_kill < n, "the scheduler was killed during the burst"
            # requests the victim never answered are replayed on the survivor (same keys)
            with httpx.Client(base_url=survivor.url + "/api/v1", timeout=30) as c:
                for key in keys:
                    if key not in acked:
                        r = c.post("/jobs/call/runs", json={}, headers={"Idempotency-Key": key})
                        assert r.status_code in (200, 201), r.text
                        acked[key] = r.json()["id"]
            runs = ended_runs(survivor, set(acked.values()))
            assert len(runs) == n
            assert metric(survivor.url, "jobwire_replica_runs_taken_over_total") > 0, "the victim's runs"
            check_once(runs, hook, doubles_allowed=True)
