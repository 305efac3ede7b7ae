"""At start, after a stop or a crash: resume the runs that were in flight (reconcile), then run
the fire times missed while jobwire was down (catch-up, per each job's policy).

With several replicas (docs/replicas.md) reconcile gets the runs this replica claimed — at start
its own and those of dead replicas, later those of a replica whose heartbeat expired — never every
active run; catch-up runs when a replica becomes the leader."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import structlog

from jobwire.engine.runs import RunStates
from jobwire.engine.scheduler import missed_fires
from jobwire.model import Admission, CatchupPolicy, Incoming, Run, RunError, RunState, utcnow
from jobwire.store import Store, StoredJob

log = structlog.get_logger(__name__)

SubmitMany = Callable[[list[Incoming]], Awaitable[list[Admission | BaseException]]]


async def reconcile(active: list[Run], states: RunStates, taken_over: bool = False) -> None:
    """Resume what was in flight when jobwire (or, `taken_over`, another replica) last ran these
    runs. A taken-over pending run may have been started by the replica that died (its launch
    journal is not here): it is resumed — adopted by name, or reported lost — unless it was
    waiting for a retry time still to come."""
    now = utcnow()
    for run in active:
        if run.id in states.runs:
            continue  # already running here
        stored = states.jobs.get(run.job)
        if stored is None:
            run.finished_at = utcnow()
            run.error = RunError(message="its job is no longer defined", reason="JobDeleted")
            states.transition(run, RunState.failed, "job deleted while jobwire was down")
            continue
        states.runs[run.id] = run
        states.active_keys[run.key] = run.id
        states.metrics.runs_active.labels(run.state.value).inc()
        if run.state == RunState.queued:
            states.slots.enqueue(run.job, run.concurrency_key, run.id)
            continue
        states.slots.occupy(run.job, run.concurrency_key, run.id, run.created_at)
        waiting = run.not_before is not None and run.not_before > now
        resumed = (
            run.state == RunState.running
            or states.attempts.was_launched(run)
            or (taken_over and not waiting)
        )
        log.info("resuming run", run_id=run.id, job=run.job, state=run.state.value, resumed=resumed)
        states.attempts.launch(run, stored.job, resumed=resumed)
    # each (job, concurrency key) with runs here, once: one pass over the runs, not one per job
    # (100,000 jobs × 1,000 runs in flight was 10⁸ steps)
    for job, key in dict.fromkeys((r.job, r.concurrency_key) for r in states.runs.values()):
        states.promote(job, key)  # a job no longer defined: nothing (`promote` checks)
    await states.committer.flush()


async def catch_up(
    store: Store, jobs: Mapping[str, StoredJob], submit_many: SubmitMany, now: datetime | None = None
) -> None:
    """Fire times missed up to `now` while jobwire (or the leader) was down, per each job's
    catch-up policy."""
    now = now or utcnow()
    last_fires = await store.last_fires()  # one read, not one per trigger
    due: list[Incoming] = []
    for stored in jobs.values():
        job = stored.job
        if stored.paused or job.catchup.policy == CatchupPolicy.skip:  # nothing to look up
            continue
        for tid, trig in zip(job.trigger_ids(), job.triggers, strict=True):
            if trig.type not in ("cron", "interval", "at"):
                continue
            last = last_fires.get((job.name, tid))
            for t in missed_fires(trig, last, now, job.catchup):
                due.append(Incoming(job=job.name, trigger=tid, source=trig.type, scheduled_at=t))
    if due:
        log.info("catching up missed fire times", count=len(due))
        for result in await submit_many(due):
            if isinstance(result, BaseException):
                raise result


__all__ = ["catch_up", "reconcile"]
