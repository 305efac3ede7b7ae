"""Group commit: every event, run and state change goes through here.

Callers that need durability (`record`) await a future that resolves after the transaction that
holds their write has committed; state changes (`update`) are coalesced per run and written in
the same transaction as the intakes (one fsync per iteration, not one per kind of write). Under a burst,
one transaction carries hundreds of writes, so throughput is bounded by fsyncs per second, not by
writes per second — and an idle engine does nothing at all (the loop waits on an event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from jobwire import loops
from jobwire.engine.errors import LeaseUncertain, NotLeader
from jobwire.engine.metrics import Metrics
from jobwire.engine.supervisor import Spawn, describe
from jobwire.model import Run
from jobwire.store import Fence, Fenced, Intake, OutboxRow, Recorded, Store

log = structlog.get_logger(__name__)

MAX_BATCH = 2000
"""Writes per transaction at most: large enough to absorb a burst, small enough that one slow
transaction does not stall the callers behind it for long."""

UPDATE_LINGER = 0.005
"""Seconds a transaction holding only state changes (no intake, no flush waiting) is held back for
more work: a run's `running` and `succeeded` changes then coalesce into one write, and they ride on
the next intake's transaction instead of costing an fsync and a store-thread hop of their own.
Nothing waits for these writes (the run goes on; a crash is covered by the launch journal), and an
intake or a flush ends the wait at once."""


TIME_SOURCES = frozenset({"cron", "interval", "at"})


class Fencing(Protocol):
    """Who writes (`engine/replicas.Coordinator`): the fence of each commit (docs/replicas.md)."""

    def leader_fence(self) -> Fence | None:
        """The fence with the leader lease's token, or None when this replica is not the leader."""

    def owner_fence(self) -> Fence:
        """The fence of an ordinary write: the replica owns the runs it records."""

    def fenced(self) -> None:
        """A fenced commit was refused (another replica holds the lease): step down."""

    def renewing(self) -> bool:
        """The lease's local deadline passed but this replica has not stepped down: the next
        renewal decides whether it still leads."""


def is_fire(intake: Intake) -> bool:
    """A time trigger's fire: recorded only by the leader, under its lease token."""
    return intake.event.scheduled_at is not None and intake.event.source in TIME_SOURCES


class Committer:
    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._intakes: list[tuple[Intake, asyncio.Future[Recorded]]] = []
        self._updates: dict[str, Run] = {}
        self._linked: dict[str, list[tuple[Intake, asyncio.Future[Recorded]]]] = {}
        self._rows: dict[str, list[OutboxRow]] = {}
        self._down: Exception | None = None
        """Set by `_commit` when the store was unavailable during the current transaction."""
        """Outbox rows by run id, written with that run's update (see `outbox`)."""
        self.outbox_committed: Callable[[set[str]], None] | None = None
        """Told which durable sinks got rows after each commit that wrote some (wakes their relays)."""
        """Intakes that must commit with a run's update (by run id), see `link`."""
        self._flushes: list[asyncio.Future[None]] = []
        self._after: list[Callable[[], None]] = []
        # The writer loop's wake-ups (`_signal`, `_wait`): one waiter, two flags, no asyncio.Event —
        # an Event's wait, and `asyncio.timeout` around it for the linger, cost ~15 Python-level
        # calls a commit, which at one producer is a commit a run.
        self._pending = False
        """Something was handed in since the loop last looked."""
        self._hurry = False
        """Someone waits for the next commit (an intake, a linked intake, a flush): no linger."""
        self._waiter: asyncio.Future[None] | None = None
        self._lingering = False
        self.linger = UPDATE_LINGER
        self._task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        """The loop `start` ran in: `enqueue` makes its futures there (`loops.current`)."""
        self.fencing: Fencing | None = None
        """Set with several replicas possible: every commit is written under a fence — a batch
        with time-trigger fires under the leader's token (checked in its transaction)."""
        # store-write health (`/readyz`, metrics): set by `_write_failed` / `_write_ok`
        self.failing_since: float | None = None
        """Wall-clock time of the first failed commit of the current run of failures; None when writing."""
        self.last_error: str | None = None
        self.consecutive_failures = 0

    @property
    def health(self) -> dict[str, Any]:
        """Whether store writes succeed: failing or not, since when, commits failed in a row, the error."""
        return {
            "failing": self.failing_since is not None,
            "failing_since": self.failing_since,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
        }

    def _write_failed(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = time.time()
        self.consecutive_failures += 1
        self.last_error = describe(exc)
        self._metrics.store_write_failures.inc()
        self._metrics.store_write_failing.set(1)

    def _write_ok(self) -> None:
        if self.failing_since is not None:
            log.info("store writes succeed again", failed_commits=self.consecutive_failures)
            self.failing_since = None
            self.consecutive_failures = 0
            self._metrics.store_write_failing.set(0)

    def start(self, spawn: Spawn | None = None) -> None:
        """Start the writer loop; `spawn` runs it supervised (restarted if it ever raises)."""

        def run() -> Coroutine[Any, Any, None]:
            self._pending = True  # a restarted loop first looks at what is already waiting
            return self._loop()

        name = "jobwire-committer"
        self._event_loop = asyncio.get_running_loop()
        self._task = spawn(name, run) if spawn else asyncio.create_task(run(), name=name)

    async def stop(self) -> None:
        await self.flush()
        if self._task:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def abandon(self, exc: BaseException) -> tuple[int, int]:
        """At a stop that cannot write (a full disk): drop what is waiting — intakes fail with `exc`,
        state updates and after-commit callbacks are dropped — so `stop` can end. Returns (events,
        run updates) dropped; the next start reconciles those runs from what was saved."""
        linked = [pair for pairs in self._linked.values() for pair in pairs]
        events, updates = len(self._intakes) + len(linked), len(self._updates)
        for _, fut in self._intakes + linked:
            if not fut.done():
                fut.set_exception(exc)
        self._intakes, self._updates, self._after, self._linked = [], {}, [], {}
        self._signal(True)
        return events, updates

    async def record(self, intake: Intake) -> Recorded:
        return await self.enqueue(intake)

    def enqueue(self, intake: Intake) -> asyncio.Future[Recorded]:
        """Hand in an intake; the future resolves once the transaction that holds it committed."""
        fut: asyncio.Future[Recorded] = loops.current(self._event_loop).create_future()
        self._intakes.append((intake, fut))
        self._signal(True)
        return fut

    def update(self, run: Run) -> None:
        """Persist this run's current state soon. Coalesced by reference: however many changes a
        run goes through before the next transaction, it is written once, with its state as of
        that transaction (the store captures it before it yields — no copy here)."""
        self._updates[run.id] = run
        if not self._pending:
            self._signal(False)

    def link(self, run: Run, intakes: list[Intake]) -> list[asyncio.Future[Recorded]]:
        """Persist `run`'s current state and these intakes in the SAME transaction (a chained
        child's event with its parent's end): the futures resolve once it committed."""
        loop = asyncio.get_running_loop()
        pairs = [(i, loop.create_future()) for i in intakes]
        self._linked.setdefault(run.id, []).extend(pairs)
        self.update(run)
        self._signal(True)
        return [f for _, f in pairs]

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything handed in so far is committed (e.g. drop a launch marker
        only when the run's end is durable — dropping it earlier could relaunch the run after a crash)."""
        self._after.append(callback)
        self._signal(False)

    async def flush(self) -> None:
        """Wait until everything handed in so far is committed — including a transaction already
        in progress (returning early while one is in flight lost the last state change at shutdown)."""
        if self._task is None or self._task.done():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes.append(fut)
        self._signal(True)
        await fut

    def _fence(
        self, batch: list[tuple[Intake, asyncio.Future[Recorded]]]
    ) -> tuple[list[tuple[Intake, asyncio.Future[Recorded]]], Fence | None]:
        """The fence this batch commits under. Fires need the leader's: when this replica is not
        the leader, its fires are refused here (NotLeader) and the rest goes on."""
        if self.fencing is None:
            return batch, None
        if not any(is_fire(i) for i, _ in batch):
            return batch, self.fencing.owner_fence()
        fence = self.fencing.leader_fence()
        if fence is not None:
            return batch, fence
        kept: list[tuple[Intake, asyncio.Future[Recorded]]] = []
        refused = 0
        uncertain = self.fencing.renewing()
        for pair in batch:
            if not is_fire(pair[0]):
                kept.append(pair)
            elif not pair[1].done():
                refused += 1
                pair[1].set_exception(
                    LeaseUncertain("the leader lease's renewal is late: fires held until decided")
                    if uncertain
                    else NotLeader("this replica is not the leader: time triggers fire there")
                )
        self._metrics.fires_fenced.inc(refused)
        return kept, self.fencing.owner_fence()

    async def _commit(
        self,
        items: list[Intake | Run],
        rows: dict[str, list[OutboxRow]] | None = None,
        fence: Fence | None = None,
    ) -> list[Recorded | Failed | None]:
        """Commit `items` (intakes and run updates) and the outbox `rows` (by run id) in one
        transaction; if that fails because of an item (not because the store is unavailable),
        commit each half on its own, down to the single item at fault — so one value the store
        refuses fails alone and never takes the callers of its batch with it. A run's outbox rows
        go with its update (rows of a run without one, with the first half). Per item: its Recorded
        (intakes), None (updates), or Failed. Rows that were not written are put back (store
        unavailable) or dropped with their refused update."""
        rows = rows or {}
        intakes = [x for x in items if isinstance(x, Intake)]
        updates = [x for x in items if isinstance(x, Run)]
        try:
            recorded = await self._write(intakes, updates, rows, fence)
        except Exception as exc:
            return await self._split(exc, items, rows, fence)
        it = iter(recorded)
        return [next(it) if isinstance(x, Intake) else None for x in items]

    async def _write(
        self, intakes: list[Intake], updates: list[Run], rows: dict[str, list[OutboxRow]], fence: Fence | None
    ) -> list[Recorded]:
        """One transaction of these intakes, updates and outbox rows: a Recorded per intake. Raises
        what the store raised."""
        outbox = [r for batch in rows.values() for r in batch] if rows else []
        if fence is not None:
            recorded = await self._store.commit(intakes, updates, outbox, fence=fence)
        elif outbox:
            recorded = await self._store.commit(intakes, updates, outbox)
        else:
            recorded = await self._store.commit(intakes, updates)
        if outbox and self.outbox_committed is not None:
            self.outbox_committed({r.sink for r in outbox})
        return recorded

    async def _split(
        self, exc: Exception, items: list[Intake | Run], rows: dict[str, list[OutboxRow]], fence: Fence | None
    ) -> list[Recorded | Failed | None]:
        """`_commit` after its transaction of `items` failed with `exc`: every item Failed (the store
        unavailable, or a single item), else each half committed on its own."""
        outbox = [r for batch in rows.values() for r in batch]
        if isinstance(exc, Fenced) and self.fencing is not None:
            self.fencing.fenced()  # the batch failed whole; its fires are refused when retried
        unavailable = self._store.unavailable(exc)
        if unavailable or len(items) <= 1:
            if unavailable:
                self._down = exc
                for rid, batch in rows.items():
                    self._rows[rid] = batch + self._rows.get(rid, [])
            elif outbox:
                log.error("outbox documents not stored", documents=len(outbox), error=str(exc))
            return [Failed(exc, unavailable)] * len(items)
        mid = len(items) // 2
        left_runs = {x.id for x in items[:mid] if isinstance(x, Run)}
        right_runs = {x.id for x in items[mid:] if isinstance(x, Run)}
        left = {rid: b for rid, b in rows.items() if rid not in right_runs}
        right = {rid: b for rid, b in rows.items() if rid in right_runs and rid not in left_runs}
        first = await self._commit(items[:mid], left, fence)
        return first + await self._commit(items[mid:], right, fence)

    def outbox(self, run_id: str, row: OutboxRow) -> None:
        """Write `row` (a status document for a durable sink) in the same transaction as the run's
        pending state change (or the next transaction, when it has none)."""
        self._rows.setdefault(run_id, []).append(row)
        self._signal(False)

    def _signal(self, urgent: bool) -> None:
        """Something was handed in (`urgent`: someone waits for its commit): wake the writer loop
        when it waits for work, or, if urgent, when it lingers."""
        self._pending = True
        if urgent:
            self._hurry = True
        if self._waiter is not None and (urgent or not self._lingering):
            _wake_up(self._waiter)

    async def _wait(self, linger: float | None) -> None:
        """Until something is handed in (`linger` None), or until something urgent is or `linger`
        seconds passed."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._lingering = linger is not None
        timer = loop.call_later(linger, _wake_up, waiter) if linger is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                await self._wait(None)
            self._pending = False
            while self._intakes or self._updates or self._after or self._rows:
                if not self._hurry and self.linger > 0:
                    await self._wait(self.linger)
                self._hurry = False
                if len(self._intakes) <= MAX_BATCH:
                    batch, self._intakes = self._intakes, []
                else:
                    batch, self._intakes = self._intakes[:MAX_BATCH], self._intakes[MAX_BATCH:]
                updates, self._updates = self._updates, {}
                rows, self._rows = self._rows, {}
                linked: dict[str, list[tuple[Intake, asyncio.Future[Recorded]]]] = {}
                retry_with: dict[int, str] = {}
                if self._linked:  # chained children, committed with their parent's end
                    linked = {rid: self._linked.pop(rid) for rid in updates.keys() & self._linked.keys()}
                    retry_with = {id(f): rid for rid, pairs in linked.items() for _, f in pairs}
                    for pairs in linked.values():
                        batch += pairs
                batch, fence = self._fence(batch)
                after, self._after = self._after, []
                # a flush waits for what was handed in before it: this transaction's, unless more
                # intakes wait for the next one. Taken by swapping the list, never by aliasing it: a
                # flush() called while this transaction is in flight belongs to the next one.
                flushes: list[asyncio.Future[None]] = []
                if not self._intakes:
                    flushes, self._flushes = self._flushes, []
                t0 = time.perf_counter()
                intakes = [i for i, _ in batch]
                runs = list(updates.values())
                self._down = None
                try:  # the whole batch in one transaction: what nearly every commit is
                    recorded = await self._write(intakes, runs, rows, fence) if batch or runs or rows else []
                except Exception as exc:  # an item the store refuses, or the store itself: `_split`
                    items: list[Intake | Run] = [*intakes, *runs]
                    results = await self._split(exc, items, rows, fence)
                else:
                    for (_, fut), rec in zip(batch, recorded, strict=True):
                        if not fut.done():
                            fut.set_result(rec)
                    results = []
                unavailable = self._down
                if results:  # the batch failed whole: its items were committed apart, or not at all
                    for (intake, fut), res in zip(batch, results, strict=False):
                        if fut.done():
                            continue
                        if isinstance(res, Failed) and res.unavailable and id(fut) in retry_with:
                            # a linked intake waits for its run's update, which is retried: so is it
                            self._linked.setdefault(retry_with[id(fut)], []).append((intake, fut))
                        elif isinstance(res, Failed):
                            fut.set_exception(res.exc)
                        else:
                            assert res is not None
                            fut.set_result(res)
                    for run, res in zip(updates.values(), results[len(batch) :], strict=True):
                        if not isinstance(res, Failed):
                            continue
                        if res.unavailable:  # retried with the next batch (same object: its latest state)
                            self._updates.setdefault(run.id, run)
                        else:
                            log.error(
                                "a run's state could not be stored; it stays as last saved",
                                run_id=run.id, state=run.state.value, error=describe(res.exc),
                            )
                    refused = sum(1 for r in results if isinstance(r, Failed) and not r.unavailable)
                    if refused:
                        self._metrics.store_items_refused.inc(refused)
                if unavailable is not None:  # the store failed: callers get the error, nothing is acked
                    self._write_failed(unavailable)
                    log.error(
                        "store write failed", error=str(unavailable), events=len(batch), updates=len(updates)
                    )
                    self._after[:0] = after
                    for f in flushes:
                        if not f.done():
                            f.set_exception(unavailable)
                    await asyncio.sleep(0.5)
                    continue
                self._write_ok()
                self._metrics.commit_seconds.observe(time.perf_counter() - t0)
                self._metrics.batch_size.observe(len(intakes) + len(runs))
                for f in flushes:
                    if not f.done():
                        f.set_result(None)
                for cb in after:
                    try:
                        cb()
                    except Exception as exc:
                        log.warning("after-commit callback failed", error=str(exc))
            for f in self._flushes:
                if not f.done():
                    f.set_result(None)
            self._flushes = []


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class Failed:
    """An item whose commit failed: because the store is unavailable (retry later), or because
    the store refuses this item (it fails alone)."""

    exc: Exception
    unavailable: bool
