"""Two engines on one store (in process, the memory store's in-process coordination): only the
leader fires; a fenced-out leader's fires are refused in the commit and it steps down; a clean
stop hands the lease over at the next tick. The multi-process version on PostgreSQL is
tests/e2e/test_replicas.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import IntervalTrigger, Job, LocalTarget, Run, utcnow
from jobwire.store import LEADER, Lease, RunQuery
from jobwire.store.memory import MemoryStore
from tests.support.waiting import eventually


class SharedMemoryStore(MemoryStore):
    """One store object shared by two engines: opened once, closed by neither."""

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        pass


def _settings(tmp_path: Path, name: str, expiry: float = 2.0, **more: Any) -> Settings:
    """Short leases and heartbeats: `expiry` seconds for both, renewed every 0.2 s."""
    return Settings(
        data_dir=tmp_path / name,
        lease_seconds=expiry,
        lease_renew_seconds=0.2,
        heartbeat_expiry_seconds=expiry,
        shutdown_grace=timedelta(milliseconds=100),
        **more,
    )


TICK = Job(
    name="tick",
    triggers=[IntervalTrigger(interval=timedelta(milliseconds=100))],
    target=LocalTarget(command=["sleep", "30"]),
)
"""Its runs stay active (single-process stores know the owners of active runs only)."""


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SharedMemoryStore, Engine, Engine]]:
    store = SharedMemoryStore()
    await store.open()
    await store.save_job(TICK, "api")
    a, b = Engine(_settings(tmp_path, "a"), store), Engine(_settings(tmp_path, "b"), store)
    await a.start()
    await b.start()
    try:
        yield store, a, b
    finally:
        for eng in (b, a):
            await eng.stop()


async def _owners(store: MemoryStore) -> dict[str, str | None]:
    runs = await all_runs_of(store, "tick")
    return await store.run_owners([r.id for r in runs])


async def test_only_the_leader_fires(pair: tuple[SharedMemoryStore, Engine, Engine]) -> None:
    store, a, b = pair
    assert a.coordinator.is_leader() and not b.coordinator.is_leader()
    await eventually(lambda: _at_least(store, 5), 10, "fires")
    owners = set((await _owners(store)).values())
    assert owners == {a.coordinator.replica}  # the follower fired nothing
    assert b.health()["replica"]["leader_id"] == a.coordinator.replica


async def test_a_follower_schedules_its_jobs_for_upcoming(pair: tuple[SharedMemoryStore, Engine, Engine]) -> None:
    """The heap is built once at start, after the election: the follower builds it too (the
    dashboard's upcoming fires; that it fires nothing is `test_only_the_leader_fires`)."""
    _, a, b = pair
    assert not b.coordinator.is_leader()
    assert "tick" in {name for _, name, _ in b.scheduler.upcoming(5)}
    assert "tick" in {name for _, name, _ in a.scheduler.upcoming(5)}


async def test_a_clean_stop_hands_the_lease_over(pair: tuple[SharedMemoryStore, Engine, Engine]) -> None:
    store, a, b = pair
    await eventually(lambda: _at_least(store, 3), 10, "fires by a")
    before = len(await all_runs_of(store, "tick"))
    await a.stop()
    await eventually(b.coordinator.is_leader, 5, "b to lead")
    await eventually(lambda: _at_least(store, before + 3), 10, "fires by b")
    runs = await all_runs_of(store, "tick")
    seconds = [r.scheduled_at for r in runs]
    assert len(seconds) == len(set(seconds))  # no fire time recorded twice
    assert b.coordinator.replica in set((await _owners(store)).values())


async def test_a_fenced_out_leader_cannot_fire_and_steps_down(
    pair: tuple[SharedMemoryStore, Engine, Engine],
) -> None:
    store, a, b = pair
    await eventually(lambda: _at_least(store, 2), 10, "fires by a")
    # what a pause (SIGSTOP) leads to: a's coordinator stops renewing, a's lease ends in the store
    # while a's clock still runs and a still believes it leads (its local deadline is ahead)
    paused = asyncio.Event()

    async def hang() -> None:
        await paused.wait()

    a.coordinator.tick = hang  # type: ignore[method-assign]
    old = a.coordinator.lease
    assert old is not None
    coordination = store.coordination
    coordination._leases[LEADER] = Lease(LEADER, old.holder, old.token, utcnow() - timedelta(seconds=1))
    await eventually(b.coordinator.is_leader, 5, "b to take the expired lease")
    new = b.coordinator.lease
    assert new is not None and new.token == old.token + 1
    # a's next fire batch is refused in the commit (Fenced), and a steps down
    await eventually(lambda: not a.coordinator.is_leader(), 5, "a to step down")
    assert a.metrics.store_write_failures._value.get() >= 1, "the fence in the commit refused a's fires"
    owners = await _owners(store)
    late = [
        r for r in await all_runs_of(store, "tick") if owners.get(r.id) == a.coordinator.replica
        and r.created_at > new.expires_at - timedelta(seconds=2)
    ]
    assert late == []  # nothing a recorded after b held the lease
    await eventually(lambda: _owned_by(store, b.coordinator.replica), 10, "fires by b")


async def all_runs_of(store: MemoryStore, job: str) -> list[Run]:
    out: list[Run] = []
    cursor = None
    while True:
        page = await store.list_runs(RunQuery(job=job, limit=1000, cursor=cursor))
        out += page.items
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def _at_least(store: MemoryStore, n: int) -> bool:
    return len(await all_runs_of(store, "tick")) >= n


async def _owned_by(store: MemoryStore, replica: str) -> bool:
    return replica in set((await _owners(store)).values())


async def test_the_committer_refuses_a_stale_leaders_fires_whole_and_steps_down() -> None:
    """The fence in the commit, without the lease's local deadline: a stale token is refused by
    the store; the batch fails whole (the API event in it too, for its caller to retry) and the
    replica is told to step down; the next fire, with no lease, is refused before the store."""

    from jobwire.engine.committer import Committer
    from jobwire.engine.errors import NotLeader
    from jobwire.engine.metrics import Metrics
    from jobwire.store import Fence, Fenced, Intake
    from tests.contract.test_store_contract import intake

    store = MemoryStore()
    await store.open()
    stale = await store.acquire_lease(LEADER, "a", 0.05)
    assert stale is not None
    await eventually(lambda: store.acquire_lease(LEADER, "b", 30), 5, "b takes the lease")

    class Stale:
        stepped_down = 0
        lease: int | None = stale.token

        def leader_fence(self) -> Fence | None:
            return None if self.lease is None else Fence("a", self.lease)

        def owner_fence(self) -> Fence:
            return Fence("a")

        def fenced(self) -> None:
            self.stepped_down += 1
            self.lease = None

        def renewing(self) -> bool:
            return False  # stepped down: no renewal pending

    fencing = Stale()
    committer = Committer(store, Metrics())
    committer.fencing = fencing
    committer.start()
    try:
        fire = intake(key="tick/t/2026-03-01T12:00:00Z")
        fire.event.scheduled_at, fire.event.source = utcnow(), "interval"
        other = intake()
        results = await asyncio.gather(committer.enqueue(fire), committer.enqueue(other), return_exceptions=True)
        assert all(isinstance(r, Fenced) for r in results), results
        assert fencing.stepped_down == 1
        assert fire.run is not None and await store.get_run(fire.run.id) is None
        again = intake(key="tick/t/2026-03-01T12:00:01Z")
        again.event.scheduled_at, again.event.source = utcnow(), "interval"
        retry: list[Intake] = [again, other]
        results = await asyncio.gather(*(committer.enqueue(i) for i in retry), return_exceptions=True)
        assert isinstance(results[0], NotLeader) and not isinstance(results[1], BaseException)
        assert other.run is not None and await store.run_owners([other.run.id]) == {other.run.id: "a"}
    finally:
        await committer.stop()
        await store.close()


async def test_fires_refused_while_the_lease_renewal_is_late_are_kept_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's own deadline for its lease passed (a renewal slow under load) and the renewal
    then succeeded: no other replica took over, so nobody catches up what it refused meanwhile.
    Those fires are kept and recorded once renewed (they were dropped: a second missing from a
    `catchup: all` job, seen once in the three-replica failover test)."""
    store = MemoryStore()
    eng = Engine(_settings(tmp_path, "a"), store)
    await eng.start()
    try:
        coord = eng.coordinator
        await eventually(coord.is_leader, 5, "the leader")
        every = Job.model_validate(
            {"name": "every", "triggers": [{"interval": "100ms"}], "target": {"type": "local", "command": ["true"]},
             "catchup": {"policy": "all"}}
        )  # fmt: skip
        await eng.put_job(every)

        async def times() -> list[float]:
            runs = (await store.list_runs(RunQuery(job="every", limit=1000))).items
            return sorted(r.scheduled_at.timestamp() for r in runs if r.scheduled_at is not None)

        await eventually(lambda: _fired(times, 3), 10, "three fires")
        gate = asyncio.Event()
        renew = store.renew_lease

        async def late(lease: Lease, ttl: float) -> Lease | None:
            await gate.wait()
            return await renew(lease, ttl)

        monkeypatch.setattr(store, "renew_lease", late)
        coord._lease_deadline = 0.0  # its deadline passed; the renewal that would extend it waits
        try:
            await eventually(lambda: len(eng.pending_fires) >= 3, 10, "fires held while the renewal is late")
            assert coord.lease is not None and coord.renewing()
        finally:
            gate.set()
        await eventually(lambda: not eng.pending_fires and coord.is_leader(), 10, "renewed, held fires recorded")
        before = len(await times())
        await eventually(lambda: _fired(times, before + 3), 10, "fires go on")
        got = await times()
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(got)]
        assert set(gaps) == {0.1}, f"a fire missing or doubled: {gaps}"
    finally:
        await eng.stop()


async def _fired(times: Any, n: int) -> bool:
    return len(await times()) >= n


async def test_a_single_process_store_outlives_an_expired_heartbeat(tmp_path: Path) -> None:
    """SQLite / memory: a pause longer than the heartbeat expiry (a suspended laptop) is no death —
    no other process can have taken the runs — so the replica registers again instead of exiting;
    on a shared store (PostgreSQL) the same finding makes it exit (tests/e2e/test_replicas.py)."""
    import dataclasses

    store = MemoryStore()
    eng = Engine(_settings(tmp_path, "solo"), store)
    await eng.start()
    try:
        coord = eng.coordinator
        died: list[int] = []
        coord.on_dead = lambda: died.append(1)
        rows = store.coordination._replicas
        rows[coord.replica] = dataclasses.replace(rows[coord.replica], expires_at=utcnow() - timedelta(seconds=1))
        assert not await store.heartbeat(coord.replica, 1.0)  # expired, as after the pause
        await eventually(lambda: rows[coord.replica].expires_at > utcnow(), 5, "registered again")
        assert died == [] and coord.alive()
        await eventually(coord.is_leader, 5, "still (or again) the leader")
    finally:
        await eng.stop()


async def test_a_dead_replicas_runs_are_taken_over_even_of_a_job_only_it_knew(tmp_path: Path) -> None:
    """Takeover (the store treated as shared, as PostgreSQL is): a's heartbeat stops and expires;
    b claims a's running run and resumes it — a local process b did not start is recorded lost,
    not 'job deleted', although the job was defined over a's API only (b reads it from the store)."""
    import dataclasses

    store = SharedMemoryStore()
    store.shared = True
    await store.open()
    a, b = Engine(_settings(tmp_path, "a"), store), Engine(_settings(tmp_path, "b"), store)
    await a.start()
    await b.start()
    try:
        slow = Job(name="slow", triggers=[], target=LocalTarget(command=["sleep", "30"]))
        await a.put_job(slow)
        assert "slow" not in b.jobs
        admission = await a.trigger("slow", {})
        assert admission.run is not None
        run_id = admission.run.id
        await eventually(lambda: a.runs[run_id].state.value == "running", 10, "a runs it")
        paused = asyncio.Event()

        async def hang() -> None:
            await paused.wait()

        a.coordinator.tick = hang  # type: ignore[method-assign]
        rows = store.coordination._replicas
        rows[a.coordinator.replica] = dataclasses.replace(
            rows[a.coordinator.replica], expires_at=utcnow() - timedelta(seconds=1)
        )
        await eventually(lambda: b.coordinator.taken_over == 1, 10, "b to take a's run over")
        assert "slow" in b.jobs

        async def lost() -> bool:
            run = await store.get_run(run_id)
            return run is not None and run.error is not None and run.error.reason == "Lost"

        await eventually(lost, 10, "the run recorded lost by b")
    finally:
        for eng in (b, a):
            await eng.stop()


async def test_a_start_longer_than_the_heartbeat_expiry_does_not_declare_the_replica_dead(
    tmp_path: Path,
) -> None:
    """Loading 100,000 definitions holds the loop for seconds, with no heartbeat meanwhile. A
    replica registered before that load found itself expired at its first heartbeat: on a shared
    store (PostgreSQL) it exited as declared dead, at every start; on SQLite it warned. It now
    registers once its definitions are loaded."""
    import time

    store = SharedMemoryStore()
    store.shared = True
    await store.open()
    eng = Engine(_settings(tmp_path, "big", expiry=1.0), store)
    died: list[int] = []
    eng.coordinator.on_dead = lambda: died.append(1)
    load = eng.job_registry.load

    async def slow_load() -> None:
        await load()
        time.sleep(1.5)  # the loop held, as validating a very large job set does

    eng.job_registry.load = slow_load  # type: ignore[method-assign]
    await eng.start()
    try:
        started = time.time()
        coord = eng.coordinator
        await eventually(
            lambda: bool(died) or (coord.last_heartbeat or 0) > started, 10, "the first heartbeat after start"
        )
        assert died == []
        assert coord.alive()
    finally:
        await eng.stop()


async def test_the_heartbeat_goes_on_while_job_files_are_reloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload reads and validates the files on a worker thread: a large registry takes
    seconds, and the loop must write the heartbeat meanwhile — on a shared store a replica whose
    heartbeat expired exits. Before, the reload held the loop for all of it."""
    import time

    from jobwire.engine import jobs as jobs_module

    folder = tmp_path / "jobs"
    folder.mkdir()
    (folder / "a.yaml").write_text(
        "jobs:\n  - name: a\n    triggers: [{cron: '0 3 * * *'}]\n    target: {type: local, command: ['true']}\n"
    )
    store = SharedMemoryStore()
    store.shared = True
    await store.open()
    eng = Engine(_settings(tmp_path, "data", expiry=1.0, jobs=[folder]), store)
    died: list[int] = []
    eng.coordinator.on_dead = lambda: died.append(1)
    await eng.start()
    try:
        load = jobs_module.load_paths

        def slow_load(*args: Any) -> Any:
            found = load(*args)
            time.sleep(1.5)  # validating a very large registry
            return found

        monkeypatch.setattr(jobs_module, "load_paths", slow_load)
        assert await eng.reload_files() == []
        done = time.time()
        coord = eng.coordinator
        await eventually(lambda: bool(died) or (coord.last_heartbeat or 0) > done, 10, "a heartbeat after the reload")
        assert died == []
        assert coord.alive()
    finally:
        await eng.stop()
