"""Three `jobwire serve` replicas on one fresh PostgreSQL database, every-second cron jobs, the
leader killed with -9 and stopped with SIGSTOP (docs/replicas.md):

- each (job, scheduled second) has exactly one run; a job with `catchup: all` has a run for every
  second from its first to its last (nothing missed across the failovers); one with the default
  `latest` has no gap longer than lease + 5 s;
- every launch (a line the job appends: its attempt name and the replica that launched it) happens
  once;
- the SIGSTOPped leader, resumed after its lease and heartbeat ended, launches nothing and exits
  with status 75 (declared dead);
- a new leader is elected within lease + 5 s after each failure.

The short version runs in `make test`; the minute with 50 jobs and repeated failures is `slow`.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.pgdb import create_database, drop_database
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

LEASE = 3.0
"""Short leases keep the test short: lease 3 s, renewal and heartbeat every 1 s, expiry 3 s."""
TIMING = {
    "JOBWIRE_LEASE_SECONDS": str(LEASE),
    "JOBWIRE_LEASE_RENEW_SECONDS": "1",
    "JOBWIRE_HEARTBEAT_EXPIRY_SECONDS": str(LEASE),
}


@pytest.fixture
def pg_url() -> Iterator[str]:
    name, url = asyncio.run(create_database())
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))


def _jobs(path: Path, launches: Path, n_all: int, n_latest: int) -> Path:
    line = f'echo "$JOBWIRE_RUN_ID $JOBWIRE_CALLBACK_URL" >> {launches}'
    target = {"type": "local", "command": ["sh", "-c", line]}
    jobs: list[dict[str, Any]] = [
        {"name": f"all-{i}", "triggers": [{"cron": "* * * * * *"}], "target": target,
         "catchup": {"policy": "all", "window": "10m", "max": 1000}}
        for i in range(n_all)
    ] + [
        {"name": f"latest-{i}", "triggers": [{"cron": "* * * * * *"}], "target": target}
        for i in range(n_latest)
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"jobs": jobs}))
    return path


def _replica(server: Server) -> dict[str, Any] | None:
    try:
        body = httpx.get(f"{server.url}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    replica: dict[str, Any] | None = body.get("replica")
    return replica


def _leader(servers: list[Server]) -> Server | None:
    """The one live server that says it leads (None while there is none, or two claim it)."""
    leaders = [s for s in servers if s.proc and s.proc.poll() is None and (_replica(s) or {}).get("leader")]
    return leaders[0] if len(leaders) == 1 else None


def _seconds(items: list[dict[str, Any]]) -> list[datetime]:
    return sorted(datetime.fromisoformat(r["scheduled_at"].replace("Z", "+00:00")) for r in items)


def _fires(servers: list[Server], count: int) -> None:
    """Wait until `count` more seconds of job all-0 are recorded (the clock runs on the leader)."""
    live = next(s for s in servers if s.proc and s.proc.poll() is None)
    with live.client() as c:
        start = len(all_runs(c, "all-0"))
        eventually_sync(lambda: len(all_runs(c, "all-0")) >= start + count, 30, f"{count} more fires")


def _run_failovers(tmp_path: Path, pg_url: str, n_all: int, n_latest: int, cycles: int, settle: int) -> None:
    launches = tmp_path / "launches.log"
    jobs = _jobs(tmp_path / "jobs.yaml", launches, n_all, n_latest)
    env = {"JOBWIRE_DATABASE_URL": pg_url, "JOBWIRE_DB_AUTO_MIGRATE": "true", **TIMING}
    servers = [Server(tmp_path / f"r{i}", jobs, **env) for i in range(3)]
    stopped: Server | None = None
    try:
        for s in servers:
            s.start(timeout=60)
        leader = eventually_sync(lambda: _leader(servers), 30, "one leader")
        _fires(servers, settle)
        for _ in range(cycles):
            # kill -9 the leader: another takes over within lease + 5 s
            t0 = time.monotonic()
            leader.kill9()
            successor = eventually_sync(
                lambda old=leader: (s := _leader(servers)) is not old and s, LEASE + 5 + 5, "a new leader"
            )
            assert time.monotonic() - t0 <= LEASE + 5 + 1, "failover took longer than lease + 5 s"
            # restart the killed one (a new replica id, a new life) so three stay
            restarted = Server(leader.data_dir, jobs, port=leader.port, **env)
            servers[servers.index(leader)] = restarted
            restarted.start(timeout=60)
            _fires(servers, settle)
            # SIGSTOP the leader past its lease and heartbeat; resumed, it launches nothing and exits
            stopped = successor
            assert stopped.proc is not None
            port_mark = f":{stopped.port}/"
            before = _launched_by(launches, port_mark)
            stopped.proc.send_signal(signal.SIGSTOP)
            leader = eventually_sync(  # no floor here (the kill -9 above has it): room for a loaded machine
                lambda s0=stopped: (s := _leader([x for x in servers if x is not s0])) and s,
                30,
                "a leader after SIGSTOP",
            )
            dead = eventually_sync(
                lambda s0=stopped, obs=leader: not _alive_row(obs, s0), 30, "the stopped one declared dead"
            )
            assert dead
            launched_while_stopped = _launched_by(launches, port_mark)
            stopped.proc.send_signal(signal.SIGCONT)
            assert stopped.proc.wait(30) == 75, stopped.output()[-3000:]
            assert _launched_by(launches, port_mark) == launched_while_stopped >= before
            replacement = Server(stopped.data_dir, jobs, port=stopped.port, **env)
            servers[servers.index(stopped)] = replacement
            stopped = None
            replacement.start(timeout=60)
            _fires(servers, settle)
            leader = eventually_sync(lambda: _leader(servers), 30, "one leader at the end of a cycle")
        with leader.client() as c:  # a live one: under load a replica may miss its 3 s expiry and exit 75
            runs = {name: all_runs(c, name) for name in [f"all-{i}" for i in range(n_all)] + [
                f"latest-{i}" for i in range(n_latest)]}
            events = c.get("/events", params={"limit": 1}).status_code
        assert events == 200
    finally:
        if stopped is not None and stopped.proc is not None and stopped.proc.poll() is None:
            stopped.proc.send_signal(signal.SIGCONT)
        for s in servers:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
    for name, items in runs.items():
        seconds = _seconds(items)
        assert seconds, f"{name} never fired"
        assert len(seconds) == len(set(seconds)), f"{name}: a second with two runs"
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(seconds)]
        if name.startswith("all-"):
            assert max(gaps, default=1.0) == 1.0, f"{name}: a missed second ({max(gaps)} s gap)"
        else:
            assert max(gaps, default=0.0) <= LEASE + 5, f"{name}: a gap of {max(gaps)} s"
    names = [line.split()[0] for line in launches.read_text().splitlines() if line.strip()]
    doubles = [n for n, k in Counter(names).items() if k > 1]
    assert not doubles, f"attempts launched twice: {doubles[:5]}"
    # every run that succeeded ran its last attempt exactly once (above: no attempt twice)
    launched = set(names)
    succeeded = [r for items in runs.values() for r in items if r["state"] == "succeeded"]
    assert succeeded
    missing = [r["id"] for r in succeeded if (r["id"] if r["attempt"] == 1 else f"{r['id']}-{r['attempt']}") not in launched]
    assert not missing, f"succeeded runs that never launched: {missing[:5]}"


def _launched_by(launches: Path, port_mark: str) -> int:
    if not launches.exists():
        return 0
    return sum(1 for line in launches.read_text().splitlines() if port_mark in line)


def _alive_row(observer: Server, stopped: Server) -> bool:
    """Whether the registry (as `observer` last read it) still has `stopped` alive."""
    me = _replica(observer) or {}
    pid = stopped.proc.pid if stopped.proc else -1
    return any(r.get("pid") == pid and r.get("alive") for r in me.get("replicas", []))


def test_failover_kill9_and_sigstop(tmp_path: Path, pg_url: str) -> None:
    _run_failovers(tmp_path, pg_url, n_all=2, n_latest=2, cycles=1, settle=2)


@pytest.mark.slow
def test_failover_repeatedly_with_50_jobs(tmp_path: Path, pg_url: str) -> None:
    _run_failovers(tmp_path, pg_url, n_all=25, n_latest=25, cycles=3, settle=5)
