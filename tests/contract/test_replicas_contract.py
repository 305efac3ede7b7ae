"""The store contract for replicas (APScheduler 4 style): TWO replicas on one store — the replica
registry and its heartbeats, the leader lease and its fencing token, fenced commits, and claims of
a dead replica's runs. Run against every store: memory and SQLite (the coordination state lives in
the process, both replicas use the one store object) and PostgreSQL (each replica has its own
store object, its own pool, on one database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobwire.model import RunState
from jobwire.store import LEADER, Fence, Fenced, Intake, Lease, Store, StoreError
from tests.support.waiting import eventually

from .test_store_contract import all_runs, intake

A, B = "replica-a", "replica-b"
LONG = 30.0
SHORT = 0.3


@pytest.fixture
async def other(store: Store, store_kind: str) -> AsyncIterator[Store]:
    """The second replica's view of the store: a second PostgreSQL store on the same database, or
    (single-process stores) the same object."""
    if store_kind != "postgres":
        yield store
        return
    from jobwire.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    second = PostgresStore(store.url, pool_size=2)
    await second.open()
    try:
        yield second
    finally:
        await second.close()


# --------------------------------------------------------------------------- leases


async def test_only_one_replica_holds_the_lease(store: Store, other: Store) -> None:
    first = await store.acquire_lease(LEADER, A, LONG)
    assert first is not None and first.holder == A and first.token >= 1
    assert await other.acquire_lease(LEADER, B, LONG) is None
    again = await store.acquire_lease(LEADER, A, LONG)  # the holder asking again: same token
    assert again is not None and again.token == first.token
    held = await other.get_lease(LEADER)
    assert held is not None and (held.holder, held.token) == (A, first.token)
    assert await other.renew_lease(Lease(LEADER, B, first.token, first.expires_at), LONG) is None
    renewed = await store.renew_lease(first, LONG)
    assert renewed is not None and renewed.token == first.token and renewed.expires_at >= first.expires_at


async def test_expiry_hands_the_lease_over_and_the_token_grows(store: Store, other: Store) -> None:
    first = await store.acquire_lease(LEADER, A, SHORT)
    assert first is not None
    taken = await eventually(lambda: other.acquire_lease(LEADER, B, LONG), 10, "B takes the expired lease")
    assert taken.holder == B and taken.token > first.token
    assert await store.renew_lease(first, LONG) is None  # the old holder cannot renew
    assert await store.acquire_lease(LEADER, A, LONG) is None  # nor take it back while B holds it


async def test_release_hands_the_lease_over_at_once(store: Store, other: Store) -> None:
    first = await store.acquire_lease(LEADER, A, LONG)
    assert first is not None
    await store.release_lease(first)
    assert await store.get_lease(LEADER) is None
    second = await other.acquire_lease(LEADER, B, LONG)
    assert second is not None and second.token == first.token + 1  # tokens never go back
    await store.release_lease(first)  # a stale release does nothing
    held = await other.get_lease(LEADER)
    assert held is not None and held.holder == B


async def test_a_stale_token_commit_is_refused_as_a_whole(store: Store, other: Store) -> None:
    old = await store.acquire_lease(LEADER, A, SHORT)
    assert old is not None
    new = await eventually(lambda: other.acquire_lease(LEADER, B, LONG), 10, "B takes over")
    fire = intake(key="nightly/cron/2026-03-01T12:00:00Z")
    assert fire.run is not None
    with pytest.raises(Fenced):
        await store.commit([fire], [], fence=Fence(A, old.token))
    assert await store.get_event(fire.event.id) is None and await store.get_run(fire.run.id) is None
    # also a token of the right holder that is not the current one
    with pytest.raises(Fenced):
        await other.commit([fire], [], fence=Fence(B, new.token - 1))
    assert await store.get_run(fire.run.id) is None
    # the holder's commit with its token goes through, and its runs are its own
    recorded = await other.commit([fire], [], fence=Fence(B, new.token))
    assert recorded[0].run is not None and recorded[0].run.id == fire.run.id
    assert await store.run_owners([fire.run.id]) == {fire.run.id: B}


async def test_an_unfenced_commit_needs_no_lease(store: Store) -> None:
    i = intake()
    assert i.run is not None
    await store.commit([i], [], fence=Fence(A))
    assert await store.run_owners([i.run.id]) == {i.run.id: A}


# --------------------------------------------------------------------------- replicas


async def test_registry_and_heartbeats(store: Store, other: Store) -> None:
    await store.register_replica(A, "all", LONG, host="h1", pid=11)
    await other.register_replica(B, "all", SHORT, host="h2", pid=22)
    with pytest.raises(StoreError, match="live replica"):
        await other.register_replica(A, "all", LONG)
    rows = {r.id: r for r in await store.replicas()}
    assert set(rows) == {A, B} and rows[A].alive and rows[A].role == "all" and rows[A].pid == 11
    assert await store.heartbeat(A, LONG)

    async def b_dead() -> bool:
        return not {r.id: r for r in await store.replicas()}[B].alive

    await eventually(b_dead, 10, "B's heartbeat to expire")
    assert not await other.heartbeat(B, LONG)  # declared dead: it can never renew
    await other.register_replica(B, "all", LONG)  # a new life
    assert await other.heartbeat(B, LONG)
    await other.unregister_replica(B)
    assert [r.id for r in await store.replicas()] == [A]


# --------------------------------------------------------------------------- claims


async def _record_as(store: Store, replica: str | None, n: int, job: str = "nightly") -> list[str]:
    batch: list[Intake] = [intake(job) for _ in range(n)]
    await store.commit(batch, [], fence=None if replica is None else Fence(replica))
    return [i.run.id for i in batch if i.run is not None]


async def test_only_a_dead_replicas_runs_are_claimed(store: Store, other: Store) -> None:
    await store.register_replica(A, "all", 1.0)
    await other.register_replica(B, "all", LONG)
    mine_a = await _record_as(store, A, 5)
    mine_b = await _record_as(other, B, 3)
    done = await store.get_run(mine_a[0])
    assert done is not None
    done.state = RunState.succeeded
    await store.commit([], [done])
    assert await other.claim_runs(B) == []  # A is alive: nothing of it is claimable

    async def claimed() -> list[str]:
        return [r.id for r in await other.claim_runs(B)]

    taken = await eventually(claimed, 10, "A's active runs to become claimable")
    assert sorted(taken) == sorted(mine_a[1:])  # only A's active runs, never B's or a finished one
    assert await other.claim_runs(B) == [] and await store.claim_runs(A) == []
    owners = await store.run_owners(mine_a + mine_b)
    assert {owners[r] for r in mine_a[1:]} == {B} and {owners[r] for r in mine_b} == {B}
    assert not await store.heartbeat(A, LONG)  # A was declared dead


async def test_unowned_runs_are_claimable_and_mine_reclaims_my_own(store: Store, other: Store) -> None:
    await store.register_replica(A, "all", LONG)
    await other.register_replica(B, "all", LONG)
    nobody = await _record_as(store, None, 2)
    own = await _record_as(store, A, 2)
    got = [r.id for r in await other.claim_runs(B)]
    assert sorted(got) == sorted(nobody)
    assert await store.claim_runs(A) == []
    again = [r.id for r in await store.claim_runs(A, mine=True)]
    assert sorted(again) == sorted(own)
    assert len(await all_runs(store)) == 4


async def test_concurrent_claimers_take_each_run_once(store: Store, other: Store) -> None:
    await store.register_replica(A, "all", LONG)
    await other.register_replica(B, "all", LONG)
    ids: list[str] = []
    for _ in range(4):
        ids += await _record_as(store, None, 50)

    async def claimer(s: Store, who: str) -> list[str]:
        out: list[str] = []
        while batch := await s.claim_runs(who, limit=7):
            out += [r.id for r in batch]
        return out

    results = await asyncio.gather(*(claimer(s, w) for s, w in [(store, A), (other, B)] * 4))
    flat = [rid for got in results for rid in got]
    assert sorted(flat) == sorted(ids)  # every run claimed, none twice


async def test_32_claimers_over_10000_queued_runs_on_postgresql(tmp_path: Path) -> None:
    """The issue's claim test, PostgreSQL only (it is the store several processes share): 10,000
    queued runs of no live owner, 32 concurrent claimers on 4 store objects (own pools, as 4
    replicas would have): each run claimed exactly once."""
    from jobwire.store.postgres import PostgresStore

    from .conftest import postgres_store

    first = await postgres_store(tmp_path)
    await first.open()
    assert isinstance(first, PostgresStore)
    others = [PostgresStore(first.url, pool_size=8) for _ in range(3)]
    try:
        for s in others:
            await s.open()
        ids: list[str] = []
        for _ in range(10):
            batch = [intake(state=RunState.queued) for _ in range(1000)]
            await first.commit(batch, [])
            ids += [i.run.id for i in batch if i.run is not None]
        stores = [first, *others]
        for n, s in enumerate(stores):
            await s.register_replica(f"claimer-{n}", "all", LONG)

        async def claimer(s: Store, who: str) -> list[str]:
            out: list[str] = []
            while batch := await s.claim_runs(who, limit=50):
                out += [r.id for r in batch]
            return out

        results = await asyncio.gather(*(claimer(stores[i % 4], f"claimer-{i % 4}") for i in range(32)))
        flat = [rid for got in results for rid in got]
        assert len(flat) == len(set(flat)) == 10_000 and set(flat) == set(ids)
        owners = await first.run_owners(ids)
        assert set(owners.values()) <= {f"claimer-{n}" for n in range(4)}
    finally:
        for s in others:
            await s.close()
        await first.close()
