"""The run state machine: every state change of a run, persisted and published; a run's end
frees its concurrency slot and starts whoever waits for it; cancel and callbacks.

A run is active (queued, pending, running) while it is in `runs`; finished runs are only in the
store. `RunStates` owns the attempts (`dispatch.Attempts`) that run them on their targets, and
serves them as their `RunHost`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from jobwire.config import Settings
from jobwire.engine.backlog import Waiting
from jobwire.engine.committer import Committer
from jobwire.engine.dispatch import Attempts
from jobwire.engine.errors import Conflict, Forbidden, RunNotFound
from jobwire.engine.launcher import Launcher
from jobwire.engine.metrics import Children, Metrics
from jobwire.engine.policies import Slots
from jobwire.engine.runlogs import RunLogs
from jobwire.engine.secret import CallbackTokens
from jobwire.engine.status import StatusHub, document
from jobwire.model import TERMINAL_STATES, Run, RunError, RunState, Transition, utcnow
from jobwire.store import Store, StoredJob
from jobwire.targets.base import Target

log = structlog.get_logger(__name__)

_ACTIVE = (RunState.queued, RunState.pending, RunState.running)


class RunStates:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        jobs: Mapping[str, StoredJob],
        targets: Mapping[str, Target],
        committer: Committer,
        hub: StatusHub,
        logs: RunLogs,
        metrics: Metrics,
        tokens: CallbackTokens,
        touched: set[str],
        launcher: type[Attempts] = Attempts,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.targets = targets
        self.committer = committer
        self.hub = hub
        self.logs = logs
        self.metrics = metrics
        self.tokens = tokens
        self.owner = ""
        """This replica's id (`replicas.Coordinator.replica`): whose pending runs it reads back."""
        self.runs: dict[str, Run] = {}
        """Active runs (queued, pending, running) by id; finished runs are only in the store."""
        self.active_keys: dict[str, str] = {}
        """Run key → id of the active run that holds it."""
        self.slots = Slots()
        self.touched = touched
        """Jobs whose runs ended since the last retention sweep (retention's set, shared)."""
        self.stopping = False
        """Set when the engine stops: a freed slot no longer starts a waiting run."""
        self._active_gauge = {s: metrics.runs_active.labels(s.value) for s in _ACTIVE}
        """The gauge's child per active state: `labels()` per transition was ~1 µs each."""
        self._finished = Children(metrics.runs_finished)
        self._run_seconds = Children(metrics.run_seconds)
        self.chain: Callable[[Run], None] | None = None
        """Called with each run that ended, before its bookkeeping (`EventIntake.chain`)."""
        self.slot_freed: Callable[[str, str | None], None] | None = None
        """Several replicas (`engine/shared.py`): told instead of `promote` when a run of a job
        with a concurrency limit ended — the slot is shared, so its promotion asks the store."""
        self.forward: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        """Several replicas: hands a request about a run active on another replica to it."""
        self.attempts: Launcher = launcher(self, settings, jobs, targets, committer, logs, metrics, tokens)
        """The launch seam (`launcher.Launcher`): in process, or the runner fleet."""
        store.on_refused = self.refused

    # ------------------------------------------------------------------ state changes
    def publish(self, run: Run, block: Any = None) -> None:
        if self.hub.unheard():
            return
        stored = self.jobs.get(run.job)
        doc = document(run, stored.job if stored else None, block)
        # a run's end is told once it is committed: it leaves memory now (`finished`)
        self.hub.publish(doc, self.committer.after_commit if run.state in TERMINAL_STATES else None)

    def transition(self, run: Run, state: RunState, reason: str | None = None, block: Any = None) -> None:
        """Change a run's state: persisted (group commit) and published on every sink."""
        if run.state != state:
            if run.state in _ACTIVE:
                self._active_gauge[run.state].dec()
            if state in _ACTIVE:
                self._active_gauge[state].inc()
        run.state = state
        # built from the engine's own typed values: no validation pass needed
        run.history.append(Transition.made(state, utcnow(), reason, run.attempt))
        self.committer.update(run)
        self.publish(run, block)

    def finished(self, run: Run) -> None:
        """Bookkeeping once a run is terminal: make its chained children (in the transaction of its
        end), free its slot and start whoever waits for it."""
        if self.chain is not None:
            self.chain(run)
        self.runs.pop(run.id, None)
        self.active_keys.pop(run.key, None)
        ended = self.attempts.backlog.ended
        if ended is not None:  # the store is being read for runs the backlog keeps there (`spill.py`)
            ended.add(run.id)
        self.touched.add(run.job)
        self.logs.finish(run.id)
        # `_value_`, not the `value` property (two Python-level calls), on a per-run path
        self._finished(run.job, run.state._value_).inc()
        stored = self.jobs.get(run.job)
        if run.started_at and run.finished_at:
            kind = stored.job.target.type if stored else "unknown"
            self._run_seconds(kind).observe(
                (run.finished_at - run.started_at).total_seconds()
            )
        waiting = self.slots.release(run.job, run.concurrency_key, run.id)
        if self.slot_freed is not None and stored is not None and stored.job.concurrency.limit is not None:
            self.slot_freed(run.job, run.concurrency_key)
        elif waiting:  # runs of this job and key wait for the slot here
            self.promote(run.job, run.concurrency_key)

    # ------------------------------------------------------------------ the backlog in the store
    def forget(self, run: Run) -> None:
        """The launch backlog is full: this pending run waits in the store only (`spill.py`). It
        keeps its concurrency slot and counts as active."""
        self.runs.pop(run.id, None)
        if self.active_keys.get(run.key) == run.id:
            del self.active_keys[run.key]

    def adopt(self, run: Run) -> Waiting | None:
        """A pending run read back from the store (`spill.py`): into memory, and what it waits as.
        None when it is in memory, or recorded and about to be (its key is held), or its job is
        gone (it fails, as at a restart)."""
        if run.id in self.runs or run.key in self.active_keys:
            return None
        self.runs[run.id] = run
        self.active_keys[run.key] = run.id
        stored = self.jobs.get(run.job)
        if stored is None:
            run.finished_at = utcnow()
            run.error = RunError(message="its job is no longer defined", reason="JobDeleted")
            self.transition(run, RunState.failed, "job deleted while the run waited")
            self.finished(run)
            return None
        return run, stored.job, False, run.created_at

    async def pending_runs(
        self, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Run], tuple[datetime, str] | None]:
        return await self.store.pending_runs(self.owner, after, limit)

    async def take_back(self, run_id: str) -> Run | None:
        """A run that the launch backlog keeps in the store (`spill.py`), taken back into memory;
        None if `run_id` is no such run."""
        if not self.attempts.backlog.stored or run_id in self.runs:
            return None
        stored = await self.store.get_run(run_id)
        if stored is None or stored.state != RunState.pending:
            return None
        owner = (await self.store.run_owners([run_id])).get(run_id)
        if owner not in (None, self.owner):
            return None
        if self.adopt(stored) is None:  # read back meanwhile, or just ended
            return self.runs.get(run_id)
        job = self.jobs[stored.job].job
        self.attempts.backlog.gone(job.target.type)
        return stored

    def promote(self, job_name: str, ckey: str | None) -> None:
        """Start the runs waiting for a free slot of this job and concurrency key, as many as fit."""
        stored = self.jobs.get(job_name)
        if stored is None or self.stopping:
            return
        while (nxt := self.slots.next_waiting(stored.job, ckey)) is not None:
            run = self.runs.get(nxt)
            if run is None:
                continue
            self.slots.occupy(job_name, ckey, run.id, run.created_at)
            self.transition(run, RunState.pending, "a concurrency slot is free")
            self.attempts.launch(run, stored.job)

    def refused(self, ids: list[str]) -> None:
        """The store did not apply these runs' state changes (`store.base.update_allowed`): each
        ended already, or another replica changed it. What the store holds stands."""
        for run_id in ids:
            run = self.runs.get(run_id)
            log.warning(
                "a run's state change was refused by the store: it ended already, or another "
                "replica changed it; the stored state stands",
                run_id=run_id,
                state=run.state.value if run is not None else None,
            )

    # ------------------------------------------------------------------ requests about a run
    async def get_run(self, run_id: str) -> Run:
        run = self.runs.get(run_id) or await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run

    async def _active(self, run_id: str) -> Run:
        """The active run `run_id`; RunNotFound if there is none, Conflict if it already ended."""
        run = self.runs.get(run_id)
        if run is None:
            stored = await self.store.get_run(run_id)
            if stored is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            raise Conflict(f"run {run_id} already ended ({stored.state.value})")
        return run

    async def _elsewhere(self, run_id: str, request: dict[str, Any]) -> Run | None:
        """Several replicas: a run active on another one gets `request` forwarded to it; the run
        as stored is the answer, once the holder confirmed it committed the request. None when the run
        is this replica's (or not active anywhere)."""
        if self.forward is None or run_id in self.runs:
            return None
        stored = await self.store.get_run(run_id)
        if stored is None or stored.state.terminal:
            return None
        await self.forward(run_id, request)
        return await self.store.get_run(run_id) or stored  # as the holder committed it

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> Run:
        run = await self.take_back(run_id)
        if run is None:
            there = await self._elsewhere(run_id, {"op": "cancel", "reason": reason})
            if there is not None:
                return there
            run = await self._active(run_id)
        if not await self.attempts.cancel(run, reason):
            # queued, or pending before its first/next attempt: nothing runs on the target
            run.finished_at = utcnow()
            self.transition(run, RunState.cancelled, reason)
            self.finished(run)
        await self.committer.flush()
        return run

    async def callback(
        self, run_id: str, token: str, ok: bool, message: str | None, data: dict[str, Any]
    ) -> Run:
        if not self.tokens.check(run_id, token):
            raise Forbidden("wrong callback token for this run")
        request = {"op": "callback", "ok": ok, "message": message, "data": data}
        there = await self._elsewhere(run_id, request)
        if there is not None:
            return there
        run = await self._active(run_id)
        await self.attempts.deliver_callback(run, ok, message, data)
        await self.committer.flush()  # answered once recorded: a crash after the answer loses nothing
        return run

    async def run_log(self, run_id: str, follow: bool = False) -> AsyncIterator[bytes]:
        run = await self.get_run(run_id)
        stored = self.jobs.get(run.job)
        if stored is not None:
            target = self.targets.get(stored.job.target.type)
            if target is not None:
                stream = await target.logs(run, follow)
                if stream is not None:
                    async for chunk in stream:
                        yield chunk
                    return
        async for chunk in self.logs.read(run_id, follow, lambda: run_id in self.runs):
            yield chunk


__all__ = ["RunStates"]
