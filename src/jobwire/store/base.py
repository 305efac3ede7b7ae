"""The store contract: where definitions, events and runs live.

One abstract class, one contract-test suite (`tests/contract/test_store_contract.py`) run against
every implementation. The central promise is `record`: an event and the run it makes are written
in one transaction, and a run key can have at most one run — a repeat becomes a `duplicate` event
pointing at the run that exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from jobwire.model import Event, EventOutcome, Job, Run, RunState

if TYPE_CHECKING:
    from jobwire.store.local import LocalCoordination

T = TypeVar("T")


class StoreError(RuntimeError):
    """A store could not be used; the message says what to do."""


class StoreLocked(StoreError):
    """Another jobwire process holds this store (SQLite allows one scheduler per file)."""


class SlotClaim(NamedTuple):
    """A new run's claim on its job's concurrency slots, checked by a shared store (`Store.shared`)
    in the transaction that records it: `limit` runs of (job, concurrency key) may hold a slot;
    beyond that `policy` says what the new run becomes (forbid: no run, the event an `overlap`;
    queue: recorded `queued`; replace: recorded `pending`, the oldest holders named in
    `Recorded.victims` for the engine to cancel)."""

    limit: int
    policy: str


class Fenced(StoreError):
    """A fenced commit was refused: the replica no longer holds the lease with that token (another
    replica took it over). Nothing of the transaction was written; the replica must step down."""


LEADER = "leader"
"""The lease that makes a replica the leader: it alone fires time triggers and runs retention."""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a commit is written under (`Store.commit(..., fence=)`): the replica that writes (the
    owner of the runs it records) and, for a leader's writes (time-trigger fires), the lease token
    it holds. With a token, the transaction first checks, in the same transaction, that `replica`
    still holds lease `lease` with exactly that token and that it has not expired — else the whole
    commit fails with `Fenced`."""

    replica: str
    token: int | None = None
    lease: str = LEADER


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease. `token` grows by one on every acquisition (never on a renewal): the fencing
    token. `expires_at` is by the store's clock."""

    name: str
    holder: str
    token: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """A replica as registered: its heartbeat keeps `expires_at` ahead; past it the replica is
    dead and its runs may be claimed by others."""

    id: str
    role: str
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    alive: bool
    """`expires_at` is in the future, by the store's clock when it was read."""
    host: str = ""
    pid: int = 0


@dataclass(slots=True)
class Intake:
    """One event to record and, unless its outcome says otherwise, the run it makes."""

    event: Event
    run: Run | None = None
    slot: SlotClaim | None = None
    """Set by the engine for a run of a job with a concurrency limit; only a shared store reads it."""


class OutboxRow(NamedTuple):
    """A status document for a durable sink, written with the state change it describes."""

    sink: str
    doc: str
    """The document's JSON."""


@dataclass(slots=True)
class Recorded:
    event: Event
    """As stored: for a repeat run key, outcome `duplicate` and `run_id` of the existing run."""
    run: Run | None
    """The new run, or for a duplicate the run that already existed."""
    victims: list[str] = field(default_factory=list)
    """Runs (of other replicas too) the new run replaces (SlotClaim policy replace)."""


@dataclass(slots=True)
class StoredJob:
    job: Job
    origin: str
    """Where the definition came from: `api`, or `file:<path>`."""
    paused: bool
    """Kept apart from the definition so pausing a file-defined job survives a reload."""
    updated_at: datetime


@dataclass(slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(slots=True)
class RunQuery:
    job: str | None = None
    states: list[RunState] | None = None
    since: datetime | None = None
    until: datetime | None = None
    event_id: str | None = None
    trigger: str | None = None
    """A trigger id of the job (`cron`, `api`, a named trigger's id)."""
    limit: int = 50
    cursor: str | None = None
    """Opaque, from a previous page's `next_cursor`. Newest first."""


@dataclass(slots=True)
class EventQuery:
    job: str | None = None
    outcomes: list[EventOutcome] | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(slots=True)
class PruneResult:
    runs: list[str] = field(default_factory=list)
    events: int = 0


class ActivityCount(NamedTuple):
    """Runs created in one bucket of `Store.activity`'s window, in one state."""

    bucket: int
    """0 for [since, since + bucket), 1 for the next, ..."""
    state: RunState
    total: int


class SourceCount(NamedTuple):
    """Events received in `Store.activity`'s window from one kind of source, with one outcome."""

    source: str
    outcome: EventOutcome
    total: int


@dataclass(slots=True)
class Activity:
    """What `Store.activity` counts (the dashboard's overview): ordered by (bucket, state) and
    (source, outcome); combinations with no row are absent."""

    runs: list[ActivityCount] = field(default_factory=list)
    events: list[SourceCount] = field(default_factory=list)


class PruneRule(NamedTuple):
    """One job's retention for `Store.prune_jobs`: the arguments of `Store.prune`."""

    job: str
    keep: int
    older_than: datetime


INTAKE_FIELDS = ("key", "job", "trigger", "event_id", "concurrency_key", "created_at", "scheduled_at")
"""What a run is given at intake and keeps: `Store.update_runs` does not write these again."""

ALLOWED_FROM = (
    "the stored state is the same, or active (queued, pending, running) and the new one is not queued"
)
"""The rule of a conditional run update (`Store.update_runs`): an ended run is never rewritten
with another state, and no run goes back to `queued`. Whole-row last-writer-wins between two
replicas that both hold a run could otherwise revive a run the other ended."""


def known_if_same(known: Mapping[str, Job], name: str, text: str) -> Job | None:
    """`known[name]` when its JSON is the stored definition `text` (a store's `list_jobs_reusing`:
    a JSON dump, ~8 µs, instead of parsing and validating the text again, ~10× that)."""
    job = known.get(name)
    return job if job is not None and job.model_dump_json() == text else None


def read_on(rows: list[Run], limit: int) -> tuple[datetime, str] | None:
    """`Store.pending_runs`' where to read on from: the last row read, or None when fewer than
    `limit` came (no row is left)."""
    return (rows[-1].created_at, rows[-1].id) if len(rows) == limit else None


def update_allowed(stored: RunState, new: RunState) -> bool:
    """`ALLOWED_FROM` for the stores that apply it in Python."""
    if stored == new:
        return True
    return stored in (RunState.queued, RunState.pending, RunState.running) and new != RunState.queued


class Bus(ABC):
    """Notifications between the jobwire processes that share a store (PostgreSQL LISTEN/NOTIFY).
    A handler gets each payload (a str) on the event loop, and must not block."""

    @abstractmethod
    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        """Deliver `channel`'s notifications to `handler` (subscribe before `run`)."""

    @abstractmethod
    async def run(self, connected: Callable[[bool], Awaitable[None]]) -> None:
        """Connect, LISTEN on every subscribed channel, await `connected(again)` (`again`: not the
        first connection, so notifications may have been missed: resynchronise), then deliver until
        the connection is lost — and raise then, for the supervisor to call `run` again."""

    @abstractmethod
    async def notify(self, channel: str, payloads: Sequence[str]) -> None:
        """Send every payload on `channel` (in one round trip). Each must be under `MAX_PAYLOAD` bytes."""

    @property
    @abstractmethod
    def connected(self) -> bool: ...


MAX_PAYLOAD = 7900
"""Bytes of one notification payload at most (PostgreSQL's limit is 8000)."""


class Store(ABC):
    """Every method is a coroutine and safe to call concurrently from one event loop."""

    on_refused: Callable[[list[str]], None] | None = None
    """Told the ids of run updates `commit` did not apply (`update_allowed`: the run ended, or
    was changed by another replica); set by the engine."""

    async def shared_secret(self, name: str, initial: bytes | None = None) -> bytes | None:
        """A secret every process sharing this store uses (the callback key): made once — from
        `initial` if given, else random, by the store — and read by all. None: not a shared store
        (the caller keeps its own, in its data folder)."""
        return None

    def bus(self) -> Bus | None:
        """Notifications to and from the other processes sharing this store; None if not shared."""
        return None

    async def claim_slot(self, run: Run, limit: int) -> bool:
        """Shared stores: move the queued `run` to pending if fewer than `limit` runs of its job and
        concurrency key hold a slot (pending, running), checked and written in one transaction
        under a lock of that (job, key). The single-process stores leave slots to the engine."""
        return True

    @abstractmethod
    async def open(self) -> None:
        """Connect, migrate to the current schema, take the single-scheduler lock if the store needs one."""

    @abstractmethod
    async def close(self) -> None: ...

    # ---- jobs
    @abstractmethod
    async def save_job(self, job: Job, origin: str) -> StoredJob:
        """Insert or replace the definition; keeps the paused flag of an existing job
        unless the definition itself says `paused: true`."""

    @abstractmethod
    async def get_job(self, name: str) -> StoredJob | None: ...

    @abstractmethod
    async def list_jobs(self) -> list[StoredJob]:
        """Ordered by name."""

    async def save_jobs(self, jobs: Sequence[tuple[Job, str]]) -> list[StoredJob]:
        """`save_job` for each (job, origin), in order; a store that can writes them in one
        transaction (100,000 job-file jobs at a first start)."""
        return [await self.save_job(job, origin) for job, origin in jobs]

    async def list_jobs_reusing(self, known: Mapping[str, Job]) -> list[StoredJob]:
        """`list_jobs`, where a stored definition equal to `known[name]` may come back as that very
        object instead of being parsed again (what a start with 100,000 unchanged job-file jobs
        spends its time on). The result is the same either way."""
        return await self.list_jobs()

    @abstractmethod
    async def delete_job(self, name: str) -> bool:
        """Removes the definition; its runs and events stay until retention removes them."""

    async def delete_jobs(self, names: Sequence[str]) -> None:
        """`delete_job` for each name; a store that can deletes them in one transaction (a job file
        with 100,000 jobs removed, seen at the next start or reload)."""
        for name in names:
            await self.delete_job(name)

    @abstractmethod
    async def set_paused(self, name: str, paused: bool) -> StoredJob | None: ...

    # ---- events and runs
    @abstractmethod
    async def record(self, batch: list[Intake]) -> list[Recorded]:
        """Write every event of the batch and the runs they make, in ONE transaction, in order.
        A run whose key exists already is not written; its event becomes a duplicate of the
        existing run (also when the repeat is inside the same batch)."""

    @abstractmethod
    async def update_runs(self, runs: list[Run]) -> list[str]:
        """Persist the current state of these runs (history included), in one transaction — each
        only if `update_allowed(stored state, new state)`. What a run is given at intake stays as
        recorded (`INTAKE_FIELDS`: not written again — in SQLite each column written costs its
        indexes and event_id its foreign-key check). Returns the ids of the runs not written
        (refused, or no longer stored)."""

    def unavailable(self, exc: BaseException) -> bool:
        """Whether a failed write failed because the store cannot take writes now (disk full, I/O
        error, locked, connection lost) — retry later, no item is at fault — rather than because
        an item in it cannot be stored (a value the database refuses). The committer commits the
        items of a batch that failed for an item separately, so one bad item fails alone."""
        return isinstance(exc, StoreError | OSError)

    async def commit(
        self,
        batch: list[Intake],
        updates: list[Run],
        outbox: Sequence[OutboxRow] = (),
        fence: Fence | None = None,
    ) -> list[Recorded]:
        """`record(batch)`, `update_runs(updates)` and `outbox_add(outbox)` in ONE transaction (one
        fsync per group commit).

        `fence`: the runs recorded are owned by `fence.replica`; with `fence.token`, the commit is
        refused as a whole (`Fenced`) unless that replica still holds the lease with that token.

        The engine keeps mutating its runs while this is awaited, so an implementation must
        capture the state of `updates` (and of the batch's runs) before it first yields; the engine
        does not copy them. This default snapshots, then makes two calls: stores override it."""
        self.coordination.check(fence)
        foreign = self.foreign(fence, updates)
        snapshot = [r.model_copy(deep=True) for r in updates if r.id not in foreign]
        recorded = await self.record(batch) if batch else []
        self.coordination.own(fence, recorded)
        self.coordination.ended(snapshot)
        if snapshot or foreign:
            self.refused(sorted(foreign) + (await self.update_runs(snapshot) if snapshot else []))
        if outbox:
            raise StoreError(f"{type(self).__name__} has no outbox")
        return recorded

    def foreign(self, fence: Fence | None, updates: Sequence[Run]) -> set[str]:
        """The single-process stores' owner check (`coordination`): ids of `updates` owned by
        another replica than the writer `fence.replica` — refused, as PostgreSQL's `runs.owner`
        condition refuses them."""
        if fence is None or not updates:
            return set()
        return self.coordination.foreign(fence.replica, updates)

    def refused(self, ids: list[str]) -> None:
        """Tell `on_refused` about run updates that were not applied (if any)."""
        if ids and self.on_refused is not None:
            self.on_refused(ids)

    # ---- the outbox: status documents for durable sinks, in order, until the sink confirms them
    async def outbox_take(self, sink: str, limit: int) -> list[tuple[int, str]]:
        """The oldest `limit` rows of `sink`'s outbox as (seq, document), in order."""
        raise StoreError(f"{type(self).__name__} has no outbox")

    async def outbox_done(self, sink: str, upto: int) -> None:
        """Delete `sink`'s rows up to sequence number `upto` (the sink confirmed them)."""
        raise StoreError(f"{type(self).__name__} has no outbox")

    async def outbox_size(self, sink: str) -> int:
        raise StoreError(f"{type(self).__name__} has no outbox")

    @abstractmethod
    async def get_run(self, run_id: str) -> Run | None: ...

    @abstractmethod
    async def get_run_by_key(self, key: str) -> Run | None: ...

    @abstractmethod
    async def list_runs(self, query: RunQuery) -> Page[Run]: ...

    @abstractmethod
    async def active_runs(self) -> list[Run]:
        """Runs not in a terminal state (queued, pending, running), oldest first: what reconcile resumes."""

    async def pending_runs(
        self, owner: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Run], tuple[datetime, str] | None]:
        """Pending runs of replica `owner`, oldest first by (created_at, id), from `after` on
        (inclusive), reading at most `limit` (≥ 2) rows: the runs the launch backlog keeps in the
        store and takes back as places free (engine/spill.py). Returns them and where to read on
        from (the last row read; None when no row is left). A single-process store also returns
        runs that no replica owns: its runs are all its process's."""
        rows = [
            r
            for r in await self.active_runs()
            if r.state == RunState.pending and (after is None or (r.created_at, r.id) >= after)
        ][:limit]
        return self._owned(rows, owner), read_on(rows, limit)

    def _owned(self, runs: list[Run], owner: str) -> list[Run]:
        """The runs of `runs` that `owner` holds (or that no replica holds), by the in-process
        owners of a single-process store."""
        owner_of = self.coordination.owner
        return [r for r in runs if owner_of(r.id) in (None, owner)]

    @abstractmethod
    async def last_runs(self, jobs: Sequence[str]) -> dict[str, Run]:
        """The newest run (by `created_at`, then id) of each of `jobs` that has one, in one read:
        the dashboard's jobs page (one index probe per job on `runs_job_created`)."""

    @abstractmethod
    async def activity(
        self, since: datetime, bucket: timedelta, buckets: int, events_since: datetime | None = None
    ) -> Activity:
        """Runs created in `[since, since + buckets × bucket)` counted by state per bucket (the
        bucket of a run is `(created_at - since) // bucket`), and events received at or after
        `events_since` (default `since`) counted by source and outcome: the dashboard's overview
        in one read. Raises ValueError for a bucket under a microsecond or `buckets` < 1."""

    @abstractmethod
    async def get_event(self, event_id: str) -> Event | None: ...

    @abstractmethod
    async def list_events(self, query: EventQuery) -> Page[Event]: ...

    @abstractmethod
    async def last_fire(self, job: str, trigger: str) -> datetime | None:
        """The latest `scheduled_at` recorded for this time trigger: where catch-up starts."""

    @abstractmethod
    async def last_fires(self) -> dict[tuple[str, str], datetime]:
        """`last_fire` of every `(job, trigger)` that has one, in one read: what catch-up needs at startup."""

    @abstractmethod
    async def prune(self, job: str, keep: int, older_than: datetime) -> PruneResult:
        """Delete finished runs of `job` created before `older_than`, except its `keep` newest
        runs; also delete events older than `older_than` that no longer point at a kept run."""

    @abstractmethod
    async def prune_jobs(self, rules: Sequence[PruneRule]) -> PruneResult:
        """`prune` for several jobs, each with its own keep and cut-off, in ONE transaction; the
        result is the union (run ids sorted, events summed). It first reads whether anything is to
        go and writes nothing at all (no write transaction) when nothing is. One rule per job: of a
        repeated job the last rule counts."""

    # ---- coordination of replicas: registry, leases, claims
    # The defaults are for single-process stores (SQLite, memory): the state lives in this process
    # (`store/local.py`), since no other process can open the same store. PostgreSQL overrides them
    # with tables shared by every replica (migration 0002).

    shared: bool = False
    """Whether several processes can use this store at once (PostgreSQL): then replicas must
    coordinate through it. False: one process owns the store and is trivially the leader. What one
    process keeps in memory (concurrency slots, the callback key, the job catalogue, the status
    stream) is then kept or announced in the store (`shared_secret`, `bus`, `SlotClaim`)."""

    @property
    def coordination(self) -> LocalCoordination:
        """The in-process registry, leases and run owners of a single-process store."""
        found: LocalCoordination | None = self.__dict__.get("_coordination")
        if found is None:
            from jobwire.store.local import LocalCoordination

            found = self.__dict__["_coordination"] = LocalCoordination()
        return found

    async def register_replica(
        self, replica: str, role: str, ttl: float, host: str = "", pid: int = 0
    ) -> None:
        """Register (or re-register after its death) a replica with a heartbeat valid `ttl` seconds.
        Raises StoreError if a live replica with this id is registered already."""
        self.coordination.register(replica, role, ttl, host, pid)

    async def heartbeat(self, replica: str, ttl: float) -> bool:
        """Extend the replica's heartbeat to now + `ttl`. False (and nothing written) if it is not
        registered or its heartbeat already expired: it was declared dead and must not act any more."""
        return self.coordination.heartbeat(replica, ttl)

    async def unregister_replica(self, replica: str) -> None:
        """A replica stops: its row goes (the runs it leaves active are claimable at once)."""
        self.coordination.unregister(replica)

    async def replicas(self) -> list[ReplicaRow]:
        """Every registered replica, live or dead, by start time."""
        return self.coordination.rows()

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take lease `name` for `ttl` seconds if it is free or expired (the token grows by one), or
        return it as held if `holder` holds it already (same token). None if another holds it."""
        return self.coordination.acquire(name, holder, ttl)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend a held lease to now + `ttl`; None if it expired or another took it (same token kept)."""
        return self.coordination.renew(lease, ttl)

    async def release_lease(self, lease: Lease) -> None:
        """Give a held lease up now (if still held with this token), so another can take it at once."""
        self.coordination.release(lease)

    async def get_lease(self, name: str) -> Lease | None:
        """The lease as it is (held or expired), or None if it was never taken or was released."""
        return self.coordination.get(name)

    async def claim_runs(self, replica: str, limit: int = 1000, mine: bool = False) -> list[Run]:
        """Claim active runs (queued, pending, running) whose owner is not a live replica — a dead
        one's, or none — for `replica`, oldest first, at most `limit`; with `mine`, also the
        replica's own (its previous life, at start). Each run is claimed by one claimer only, however
        many claim at once (PostgreSQL: FOR UPDATE SKIP LOCKED); the runs returned are owned by
        `replica` from now on."""
        runs = await self.active_runs()
        return self.coordination.claim(replica, runs, limit, mine)

    async def run_owners(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The owner replica of each of these runs (None: none). Single-process stores know the
        owners of active runs only (what claims need); PostgreSQL keeps them for every run."""
        return {rid: self.coordination.owner(rid) for rid in run_ids}
