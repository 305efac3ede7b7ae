"""This replica among the others on one store: its heartbeat, the leader lease, and the takeover
of a dead replica's runs (docs/replicas.md).

One supervised loop (`jobwire-replica`) wakes every `lease_renew_seconds` — or, as a follower,
right when the leader's lease expires — and in that tick:

1. writes the heartbeat. If the store says the heartbeat had already expired, this replica was
   declared dead (others may have taken its runs): it must not launch or fire anything more, and
   exits (`on_dead`) so that its supervisor starts it afresh;
2. renews the leader lease if it holds it (a failed renewal steps down), or tries to take it;
   on taking it, `on_leader` catches up what was missed and starts the clock;
3. (shared stores) claims the active runs of dead replicas — `FOR UPDATE SKIP LOCKED`, so each is
   taken by one replica — and hands them to `on_orphans` (reconcile, as after a restart).

Local deadlines guard what the store cannot see in time: `is_leader()` is true only until the lease
expires by this process's monotonic clock (measured from before the request that got it, less a
margin), `alive()` likewise for the heartbeat. A process paused past them (SIGSTOP, a long GC) wakes
up neither leader nor allowed to launch; and every fire it still hands in is checked against the
lease token in the committing transaction (`Fence`), so even a clock that lies cannot make it fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from jobwire.config import Settings
from jobwire.engine.metrics import Metrics
from jobwire.model import Run, utcnow
from jobwire.store import LEADER, Fence, Lease, ReplicaRow, Store

log = structlog.get_logger(__name__)

CLAIM_BATCH = 500
START_CLAIM_LIMIT = 10_000_000
EXIT_DECLARED_DEAD = 75
"""Exit status of a replica that found itself declared dead (EX_TEMPFAIL: restart it)."""


def _exit_declared_dead() -> None:
    os._exit(EXIT_DECLARED_DEAD)


class Coordinator:
    def __init__(self, store: Store, settings: Settings, metrics: Metrics, role: str = "all") -> None:
        self.store = store
        self.metrics = metrics
        self.replica = settings.replica_id or uuid.uuid4().hex
        self.role = role
        self.lease_seconds = settings.lease_seconds
        self.renew_seconds = settings.lease_renew_seconds
        self.expiry_seconds = settings.heartbeat_expiry_seconds
        self.margin = settings.replica_margin
        self.lease: Lease | None = None
        self.seen: Lease | None = None
        """The lease as last read while another held it: a follower sleeps until its expiry."""
        self.rows: list[ReplicaRow] = []
        """Every replica as of the last tick (for /readyz, /metrics, `jobwire status`)."""
        self.last_heartbeat: float | None = None
        """Wall-clock time of the last heartbeat written."""
        self.taken_over = 0
        """Runs of dead replicas this replica claimed."""
        self._lease_deadline = 0.0
        self._alive_deadline = 0.0
        self._wake = asyncio.Event()
        self._beat = asyncio.Event()
        self._registered = False
        self._was_leading = False
        """on_leader ran and on_follower has not since: the clock runs here."""
        self.on_leader: Callable[[], Awaitable[None]] | None = None
        self.on_follower: Callable[[], Awaitable[None]] | None = None
        self.on_orphans: Callable[[list[Run]], Awaitable[None]] | None = None
        self.on_dead: Callable[[], None] = _exit_declared_dead

    # ------------------------------------------------------------------ what others ask
    def is_leader(self) -> bool:
        return self.lease is not None and time.monotonic() < self._lease_deadline

    def alive(self) -> bool:
        """Whether this replica's heartbeat is surely not expired: it may launch."""
        return time.monotonic() < self._alive_deadline

    def start_deadline(self) -> float | None:
        """Until when (`time.monotonic()`) a launch may start: the heartbeat's expiry less the
        margin, where other replicas could take this one's runs over (a shared store); else None."""
        return self._alive_deadline if self.store.shared else None

    async def wait_alive(self) -> None:
        """Until a heartbeat makes `alive()` true again (or the process exits, declared dead)."""
        while not self.alive():
            await self._beat.wait()

    def leader_fence(self) -> Fence | None:
        """The fence of a leader's write (time-trigger fires), or None when not the leader."""
        lease = self.lease
        return Fence(self.replica, lease.token) if lease is not None and self.is_leader() else None

    def renewing(self) -> bool:
        return self.lease is not None and not self.is_leader()

    def owner_fence(self) -> Fence:
        return Fence(self.replica)

    def fenced(self) -> None:
        """A fenced commit was refused: another replica holds the lease now. Step down at once."""
        if self.lease is not None:
            log.warning("fenced out: another replica took the leader lease", fencing=self.lease.token)
            self._lose_lease()
            self._wake.set()

    def health(self) -> dict[str, Any]:
        lease = self.lease
        return {
            "id": self.replica,
            "role": self.role,
            "leader": self.is_leader(),
            "lease_token": lease.token if lease is not None else None,
            "lease_expires_at": lease.expires_at.isoformat() if lease is not None else None,
            "leader_id": lease.holder if lease is not None else (self.seen.holder if self.seen else None),
            "last_heartbeat": self.last_heartbeat,
            "runs_taken_over": self.taken_over,
            "replicas": [
                {
                    "id": r.id,
                    "role": r.role,
                    "alive": r.alive,
                    "host": r.host,
                    "pid": r.pid,
                    "started_at": r.started_at.isoformat(),
                    "last_heartbeat": r.heartbeat_at.isoformat(),
                    "expires_at": r.expires_at.isoformat(),
                }
                for r in self.rows
            ],
        }

    # ------------------------------------------------------------------ lifecycle
    async def register(self) -> None:
        """Join the registry (raises StoreError if a live replica has this id)."""
        t0 = time.monotonic()
        await self.store.register_replica(
            self.replica, self.role, self.expiry_seconds, socket.gethostname(), os.getpid()
        )
        self._heartbeat_ok(t0)
        self._registered = True
        self.metrics.replica_info.labels(self.replica, self.role).set(1)

    async def own_runs(self) -> list[Run]:
        """At start: the active runs of this replica's previous life and of dead replicas (all of
        them, for a single-process store), claimed for this one — what reconcile resumes."""
        # one call: with `mine`, a second one would return this replica's runs again
        return await self.store.claim_runs(self.replica, START_CLAIM_LIMIT, mine=True)

    async def stop(self) -> None:
        """Leave: give the lease up (a follower takes it at its next tick, not after its expiry)
        and drop out of the registry (what is left active is claimable at once)."""
        lease, self.lease = self.lease, None
        self._set_gauges()
        try:
            if lease is not None:
                await self.store.release_lease(lease)
            if self._registered:  # (a start refused for a live id must not remove that one's row)
                self._registered = False
                await self.store.unregister_replica(self.replica)
        except Exception as exc:
            log.warning("could not leave the replica registry cleanly", error=str(exc))

    async def run(self) -> None:
        """The supervised loop: a tick, then sleep until the next one is due (or a fence woke it)."""
        while True:
            await self.tick()
            self._wake.clear()
            try:
                async with asyncio.timeout(self._next_delay()):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def tick(self) -> None:
        t0 = time.monotonic()
        if not await self.store.heartbeat(self.replica, self.expiry_seconds):
            if self.store.shared:
                self._declared_dead()
                return
            # one process per store (SQLite): nobody can have taken its runs while it was paused
            # (a suspended laptop): it simply registers again
            log.warning("heartbeat expired while paused; registering again", replica=self.replica)
            await self.store.register_replica(
                self.replica, self.role, self.expiry_seconds, socket.gethostname(), os.getpid()
            )
        self._heartbeat_ok(t0)
        await self.elect()
        if self.store.shared:
            await self.take_over()
        self.rows = await self.store.replicas()
        self._set_gauges()

    async def elect(self) -> None:
        """Renew the lease if held; otherwise try to take it (and lead)."""
        t0 = time.monotonic()
        if self.lease is not None:
            renewed = await self.store.renew_lease(self.lease, self.lease_seconds)
            if renewed is not None:
                self.lease = renewed
                self._lease_deadline = t0 + self.lease_seconds - self.margin
                return
            log.warning("the leader lease was lost (not renewed in time); stepping down")
            self._lose_lease()
        if self.lease is None and self.on_follower is not None and self._was_leading:
            self._was_leading = False
            await self.on_follower()
        got = await self.store.acquire_lease(LEADER, self.replica, self.lease_seconds)
        if got is None:
            self.seen = await self.store.get_lease(LEADER)
            return
        self.lease, self.seen = got, None
        self._lease_deadline = t0 + self.lease_seconds - self.margin
        self.metrics.leader_changes.inc()
        log.info("this replica is the leader now", replica=self.replica, fencing=got.token)
        self._set_gauges()
        self._was_leading = True
        if self.on_leader is not None:
            try:
                await self.on_leader()
            except BaseException:
                # not leading after all (catch-up failed): give the lease up; taken afresh later
                self._lose_lease()
                self._was_leading = False
                if self.on_follower is not None:
                    await self.on_follower()
                with contextlib.suppress(Exception):
                    await self.store.release_lease(got)
                raise

    async def take_over(self) -> None:
        """Claim the active runs of dead replicas and resume them here."""
        while batch := await self.store.claim_runs(self.replica, CLAIM_BATCH):
            self.taken_over += len(batch)
            self.metrics.runs_taken_over.inc(len(batch))
            log.warning(
                "taking over the runs of dead replicas",
                runs=len(batch),
                owners=sorted({r.id for r in self.rows if not r.alive})[:5],
            )
            if self.on_orphans is not None:
                await self.on_orphans(batch)

    # ------------------------------------------------------------------ inside
    def _heartbeat_ok(self, t0: float) -> None:
        self._alive_deadline = t0 + self.expiry_seconds - self.margin
        self.last_heartbeat = time.time()
        beat, self._beat = self._beat, asyncio.Event()
        beat.set()  # wakes the launches held by wait_alive

    def _lose_lease(self) -> None:
        self.lease = None
        self._lease_deadline = 0.0
        self._set_gauges()

    def _declared_dead(self) -> None:
        self._alive_deadline = 0.0
        self._lose_lease()
        log.critical(
            "this replica's heartbeat expired and it was declared dead (its runs may run elsewhere "
            "now): exiting without launching or firing anything more",
            replica=self.replica,
            exit_status=EXIT_DECLARED_DEAD,
        )
        self.on_dead()

    def _next_delay(self) -> float:
        delay = self.renew_seconds
        if self.lease is None and self.seen is not None:
            # a follower wakes as the leader's lease ends (by the store's clock, as best known)
            until = (self.seen.expires_at - utcnow()).total_seconds() + 0.05
            delay = min(delay, max(0.05, until))
        return delay

    def _set_gauges(self) -> None:
        self.metrics.leader.set(1 if self.is_leader() else 0)
        self.metrics.lease_token.set(self.lease.token if self.lease is not None else 0)
        if self.last_heartbeat is not None:
            self.metrics.replica_heartbeat.set(self.last_heartbeat)
        self.metrics.replicas.labels("alive").set(sum(1 for r in self.rows if r.alive))
        self.metrics.replicas.labels("dead").set(sum(1 for r in self.rows if not r.alive))


__all__ = ["EXIT_DECLARED_DEAD", "Coordinator"]
