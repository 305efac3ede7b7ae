"""The runner fleet end to end (`--role scheduler` + `--role runner` subprocesses, real RabbitMQ on a
vhost of the test's own, HTTP jobs against a server in the test process that records every
`Idempotency-Key`): every run ends exactly once; a runner killed with -9 during a burst doubles a
call only for a run it was itself calling; a scheduler killed with -9 during a burst loses and
doubles nothing once restarted."""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.brokers import RabbitVhost
from tests.support.fleet import KeyServer, metric, runner, scheduler, tcp_ports_to
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}


def jobs_file(tmp_path: Path, url: str, timeout: str = "10s") -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(
        f"""
jobs:
  - name: call
    target:
      type: http
      url: {url}
      method: POST
      payload: {{"from": "fleet"}}
      timeout: {timeout}
"""
    )
    return path


async def fire(url: str, keys: list[str], stop_after: int | None = None, on_stop: object = None) -> dict[str, str]:
    """POST one run per key (50 in flight); key → run id for every acknowledged request."""
    acked: dict[str, str] = {}
    sem = asyncio.Semaphore(50)
    stopped = asyncio.Event()
    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=30) as client:

        async def one(key: str) -> None:
            async with sem:
                if stopped.is_set():
                    return
                try:
                    r = await client.post("/jobs/call/runs", json={}, headers={"Idempotency-Key": key})
                except httpx.HTTPError as exc:  # the server died under this request: not acknowledged
                    print(f"{key}: not answered: {exc!r}")  # shown if the test fails
                    return
                if r.status_code in (200, 201):
                    acked[key] = r.json()["id"]
                else:
                    print(f"{key}: {r.status_code} {r.text[:200]}")  # shown if the test fails
                if stop_after is not None and len(acked) >= stop_after and not stopped.is_set():
                    stopped.set()
                    on_stop()  # type: ignore[operator]

        await asyncio.gather(*(one(k) for k in keys))
    return acked


def all_ended(srv: Server, n: int, timeout: float = 120) -> list[dict[str, object]]:
    with srv.client() as c:

        def done() -> list[dict[str, object]] | None:
            runs = all_runs(c, "call")
            return runs if len(runs) >= n and all(r["state"] in TERMINAL for r in runs) else None

        return eventually_sync(done, timeout=timeout, what=f"{n} runs ended")


def test_every_run_ends_exactly_once_on_two_runners(tmp_path: Path, vhost: RabbitVhost) -> None:
    n = 300
    with KeyServer() as hook:
        sched = scheduler(tmp_path / "s", jobs_file(tmp_path, hook.url), vhost.url)
        r1, r2 = runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url)
        with r1, r2, sched:
            acked = asyncio.run(fire(sched.url, [f"k{i}" for i in range(n)]))
            assert len(acked) == n
            runs = all_ended(sched, n)
            assert len(runs) == n
            assert {r["state"] for r in runs} == {"succeeded"}
            ids = {str(r["id"]) for r in runs}
            assert ids == set(acked.values())
            seen = collections.Counter(hook.keys())
            assert set(seen) == ids, "every key the server saw is a recorded run's id, and every run called"
            assert max(seen.values()) == 1, "no call twice"
            for r in (r1, r2):  # both runners took work, and say so in their metrics
                assert metric(r.url, "jobwire_runner_runs_total") > 0
                assert metric(r.url, "jobwire_runner_slots") == 16
            assert metric(sched.url, "jobwire_fleet_published_total") == n
            assert metric(sched.url, "jobwire_fleet_queue_consumers") >= 2  # work + results


def _runner_kill9(tmp_path: Path, vhost: RabbitVhost, n: int) -> None:
    with KeyServer(delay=0.02) as hook:
        sched = scheduler(tmp_path / "s", jobs_file(tmp_path, hook.url), vhost.url)
        victim, survivor = runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url)
        with survivor, sched:
            victim.start()
            acked: dict[str, str] = {}
            burst = threading.Thread(
                target=lambda: acked.update(asyncio.run(fire(sched.url, [f"k{i}" for i in range(n)])))
            )
            burst.start()
            try:
                eventually_sync(lambda: len(hook.keys()) >= n // 3, timeout=60, what="a third called")
                assert victim.proc is not None
                ports = tcp_ports_to(victim.proc.pid, hook.port)
                victim.proc.send_signal(signal.SIGKILL)
                called_at_kill = len(hook.keys())
                victim.proc.wait(10)
            finally:
                burst.join()
                victim.stop()
            assert len(acked) == n
            assert called_at_kill < n, "the runner was killed during the burst"
            assert ports, "the killed runner had connections open to the server"
            runs = all_ended(sched, n)
            ids = {str(r["id"]) for r in runs}
            assert len(runs) == n and ids == set(acked.values())
            assert {r["state"] for r in runs} == {"succeeded"}, "each run ended once, and well"
            hits = list(hook.hits)
            assert {h.key for h in hits} == ids, "every key the server saw is a recorded run's id"
            firsts: dict[str, int] = {}
            twice = set()
            for h in hits:
                if h.key in firsts:
                    twice.add(h.key)
                else:
                    firsts[h.key] = h.peer_port
            for key in twice:
                assert firsts[key] in ports, f"{key} was called twice, first not by the killed runner"
            assert metric(survivor.url, "jobwire_runner_redelivered_total") >= len(twice)


def test_runner_kill9_during_burst(tmp_path: Path, vhost: RabbitVhost) -> None:
    _runner_kill9(tmp_path, vhost, 400)


@pytest.mark.slow
def test_runner_kill9_during_burst_2000(tmp_path: Path, vhost: RabbitVhost) -> None:
    _runner_kill9(tmp_path, vhost, 2000)


def _scheduler_kill9(tmp_path: Path, vhost: RabbitVhost, n: int) -> None:
    keys = [f"k{i}" for i in range(n)]
    # calls of 0.2 s (32 slots: 160 runs/s), so runs are still in flight when the scheduler dies
    with KeyServer(delay=0.2) as hook:
        jobs = jobs_file(tmp_path, hook.url)
        r1, r2 = runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url)
        with r1, r2:
            sched = scheduler(tmp_path / "s", jobs, vhost.url).start()
            try:
                before = asyncio.run(fire(sched.url, keys, stop_after=n // 3, on_stop=sched.kill9))
            finally:
                if sched.proc and sched.proc.poll() is None:
                    sched.kill9()
            assert n // 3 <= len(before) < n
            with scheduler(tmp_path / "s", jobs, vhost.url, port=sched.port) as again:
                assert "resuming run" in again.output(), "runs were in flight when the scheduler died"
                after = asyncio.run(fire(again.url, keys))
                assert len(after) == n, "every replayed request is answered"
                for key, run_id in before.items():
                    assert after[key] == run_id, f"{key}: acknowledged as {run_id} before the crash"
                runs = all_ended(again, n)
                ids = [str(r["id"]) for r in runs]
                assert len(ids) == len(set(ids)) == n, "one run per request"
                bad = [(r["id"], r["state"], r["error"], r["history"]) for r in runs if r["state"] != "succeeded"]
                assert not bad, bad[:3]
                seen = collections.Counter(hook.keys())
                assert set(seen) == set(ids), "nothing lost: every run called, no call for another id"
                doubled = [k for k, c in seen.items() if c > 1]
                assert not doubled, f"{len(doubled)} runs called twice after the scheduler's restart"


def test_scheduler_kill9_during_burst(tmp_path: Path, vhost: RabbitVhost) -> None:
    _scheduler_kill9(tmp_path, vhost, 600)


@pytest.mark.slow
def test_scheduler_kill9_during_burst_2000(tmp_path: Path, vhost: RabbitVhost) -> None:
    _scheduler_kill9(tmp_path, vhost, 2000)


def test_runners_added_and_removed_during_a_burst(tmp_path: Path, vhost: RabbitVhost) -> None:
    """A runner stopped with SIGTERM mid-burst finishes what it holds and hands back nothing twice;
    one started mid-burst takes its share: every run ends once, no call is made twice."""
    n = 400
    with KeyServer(delay=0.05) as hook:
        sched = scheduler(tmp_path / "s", jobs_file(tmp_path, hook.url), vhost.url)
        # the one that stays is slow (2 slots: 40 calls/s), so work is left when the new one is up
        leaving, staying = runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url, slots=2)
        joining = runner(tmp_path / "r3", vhost.url)
        with staying, sched:
            leaving.start()
            acked: dict[str, str] = {}
            burst = threading.Thread(
                target=lambda: acked.update(asyncio.run(fire(sched.url, [f"k{i}" for i in range(n)])))
            )
            burst.start()
            try:
                eventually_sync(lambda: len(hook.keys()) >= n // 4, timeout=60, what="a quarter called")
                assert leaving.stop() == 0, leaving.output()[-2000:]
                joining.start()
                burst.join()
                runs = all_ended(sched, n)
                assert metric(joining.url, "jobwire_runner_runs_total") > 0, "the new runner took work"
            finally:
                burst.join()
                joining.stop()
                leaving.stop()
            assert len(acked) == n and {str(r["id"]) for r in runs} == set(acked.values())
            assert {r["state"] for r in runs} == {"succeeded"}
            seen = collections.Counter(hook.keys())
            assert set(seen) == set(acked.values()) and max(seen.values()) == 1


def test_a_second_sigterm_hands_a_runners_attempts_back_at_once(tmp_path: Path, vhost: RabbitVhost) -> None:
    """A runner's first signal gives its attempts the grace (60 s here, longer than the call); a
    second one ends it: the runner exits within seconds and the call goes back to the queue."""
    with KeyServer(delay=40) as hook:
        sched = scheduler(tmp_path / "s", jobs_file(tmp_path, hook.url, timeout="120s"), vhost.url)
        leaving = runner(tmp_path / "r1", vhost.url, JOBWIRE_SHUTDOWN_GRACE="60s")
        with sched, leaving:
            with sched.client() as c:
                assert c.post("/jobs/call/runs", json={}).status_code == 201
            eventually_sync(lambda: len(hook.keys()) == 1, timeout=30, what="the call in progress")
            assert leaving.proc is not None
            leaving.proc.send_signal(signal.SIGTERM)
            eventually_sync(lambda: "waiting for running attempts" in leaving.output(), 10, "the grace begun")
            leaving.proc.send_signal(signal.SIGTERM)
            assert leaving.proc.wait(15) == 0, leaving.output()[-2000:]
            assert "not waiting for running attempts any more: handing them back" in leaving.output()
