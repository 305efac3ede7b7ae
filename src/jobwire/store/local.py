"""Replica coordination for single-process stores (SQLite, memory): the registry, the leases and
the owners of runs, kept in this process.

No other process can open such a store (SQLite's file lock refuses a second one), so these are
trivially consistent: every method runs without yielding on the one event loop. They keep the same
API and semantics as the PostgreSQL tables (`store/sql/postgres/migrations/0002_replicas.sql`), so
the store contract tests two replicas on one store of every kind — and a SQLite jobwire is the
leader of its store from its first heartbeat.

Run owners are not persisted: after a restart no replica of the new process is alive yet, so every
active run is claimable — exactly what reconcile after a restart needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from jobwire.model import EventOutcome, Run, RunState, utcnow
from jobwire.store.base import Fence, Fenced, Lease, Recorded, ReplicaRow, StoreError

_ACTIVE = frozenset({RunState.queued, RunState.pending, RunState.running})


def _later(ttl: float) -> datetime:
    return utcnow() + timedelta(seconds=ttl)


class LocalCoordination:
    def __init__(self) -> None:
        self._replicas: dict[str, ReplicaRow] = {}
        self._leases: dict[str, Lease] = {}
        self._tokens: dict[str, int] = {}
        """Last token handed out per lease name (kept across releases: tokens never go back)."""
        self._owners: dict[str, str] = {}

    # ---- replicas
    def _alive(self, replica: str | None) -> bool:
        row = self._replicas.get(replica) if replica is not None else None
        return row is not None and row.expires_at > utcnow()

    def register(self, replica: str, role: str, ttl: float, host: str, pid: int) -> None:
        if self._alive(replica):
            raise StoreError(f"a live replica with id {replica!r} is registered already")
        now = utcnow()
        self._replicas[replica] = ReplicaRow(
            id=replica, role=role, started_at=now, heartbeat_at=now, expires_at=_later(ttl),
            alive=True, host=host, pid=pid,
        )

    def heartbeat(self, replica: str, ttl: float) -> bool:
        row = self._replicas.get(replica)
        now = utcnow()
        if row is None or row.expires_at <= now:
            return False
        self._replicas[replica] = ReplicaRow(
            id=row.id, role=row.role, started_at=row.started_at, heartbeat_at=now,
            expires_at=_later(ttl), alive=True, host=row.host, pid=row.pid,
        )
        return True

    def unregister(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def rows(self) -> list[ReplicaRow]:
        now = utcnow()
        out = [
            ReplicaRow(
                id=r.id, role=r.role, started_at=r.started_at, heartbeat_at=r.heartbeat_at,
                expires_at=r.expires_at, alive=r.expires_at > now, host=r.host, pid=r.pid,
            )
            for r in self._replicas.values()
        ]
        return sorted(out, key=lambda r: (r.started_at, r.id))

    # ---- leases
    def acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        held = self._leases.get(name)
        if held is not None and held.expires_at > utcnow():
            if held.holder != holder:
                return None
            return held
        token = self._tokens.get(name, 0) + 1
        self._tokens[name] = token
        lease = self._leases[name] = Lease(name, holder, token, _later(ttl))
        return lease

    def _held(self, lease: Lease) -> bool:
        now = self._leases.get(lease.name)
        return (
            now is not None
            and now.holder == lease.holder
            and now.token == lease.token
            and now.expires_at > utcnow()
        )

    def renew(self, lease: Lease, ttl: float) -> Lease | None:
        if not self._held(lease):
            return None
        renewed = self._leases[lease.name] = Lease(lease.name, lease.holder, lease.token, _later(ttl))
        return renewed

    def release(self, lease: Lease) -> None:
        now = self._leases.get(lease.name)
        if now is not None and now.holder == lease.holder and now.token == lease.token:
            del self._leases[lease.name]

    def get(self, name: str) -> Lease | None:
        return self._leases.get(name)

    # ---- fenced commits and run owners
    def check(self, fence: Fence | None) -> None:
        """Raise Fenced unless the fence's lease is held by its replica with its token."""
        if fence is None or fence.token is None:
            return
        if not self._held(Lease(fence.lease, fence.replica, fence.token, utcnow())):
            raise Fenced(
                f"replica {fence.replica} no longer holds the {fence.lease} lease with token "
                f"{fence.token}: nothing written"
            )

    def own(self, fence: Fence | None, recorded: Sequence[Recorded]) -> None:
        """The runs a commit recorded are owned by the replica that wrote them."""
        if fence is None:
            return
        for rec in recorded:
            run = rec.run
            if run is not None and rec.event.outcome != EventOutcome.duplicate:
                self._owners.setdefault(run.id, fence.replica)

    def ended(self, updates: Sequence[Run]) -> None:
        """Forget the owners of runs that ended (only active runs are ever claimed): the map stays
        as small as the set of active runs."""
        for run in updates:
            if run.state not in _ACTIVE:
                self._owners.pop(run.id, None)

    def owner(self, run_id: str) -> str | None:
        return self._owners.get(run_id)

    def foreign(self, replica: str, updates: Sequence[Run]) -> set[str]:
        """Ids of `updates` owned by a replica other than `replica` (one call a commit, not two
        Python-level calls an update)."""
        owners = self._owners
        return {r.id for r in updates if (o := owners.get(r.id)) is not None and o != replica}

    def claim(self, replica: str, active: Sequence[Run], limit: int, mine: bool) -> list[Run]:
        out: list[Run] = []
        for run in active:
            if len(out) >= limit:
                break
            owner = self._owners.get(run.id)
            if (owner == replica and mine) or (owner != replica and not self._alive(owner)):
                self._owners[run.id] = replica
                out.append(run)
        return out


__all__ = ["LocalCoordination"]
