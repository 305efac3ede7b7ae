"""Intake: from an `Incoming` event to a recorded `Admission` — what a source hands in.

Every way in (time triggers, the API, webhooks, brokers) ends in `EventIntake.submit` (or
`submit_many` for a batch). The contract a source relies on:

* `submit` returns only after the event — and its run, if it makes one — is durably committed
  (one group-committed transaction, fsynced), so a source may acknowledge its message as soon as
  `submit` returns, and must not before. The run is launched right after the commit.
* Every event is recorded, with its `EventOutcome` saying what became of it:
  - `run`: a new run was recorded (`Admission.run`); it is pending (launched) or queued behind the
    job's concurrency limit;
  - `duplicate`: the run key (the job, the trigger and the event key — a message id, a delivery
    id — or the scheduled time) already has a run: `event.run_id` names it. A redelivered message
    is a `duplicate`, never a second run; acknowledge it;
  - `overlap`: the job's concurrency policy is `forbid` and a run is in progress: no run;
  - `paused`: the job is paused (manual sources — the API, a rerun — still run);
  - `invalid`: no such job, invalid parameters, or a payload that cannot be stored;
    `event.reason` says what was wrong. Retrying the same message gives the same answer, so dead-
    letter it with that reason.
* `Unavailable` (an `EngineError`, HTTP 503) means nothing could be recorded: jobwire is shutting
  down. Do not acknowledge; retry later or against another replica. Any other exception from
  `submit` (the store failing to write) also means not recorded. For `submit_many`, such an error
  is returned in the failing event's place in the list.

The decision (run key, concurrency slot, the run itself) is made before the commit without
yielding, so concurrent events see each other's reservations; a failed commit gives them back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from jobwire.engine.chains import ChainIndex
from jobwire.engine.committer import TIME_SOURCES, Committer
from jobwire.engine.errors import InvalidParams, JobNotFound, Unavailable
from jobwire.engine.metrics import Children, Metrics
from jobwire.engine.policies import Decision
from jobwire.engine.runs import RunStates
from jobwire.jsonsafe import unstorable
from jobwire.model import (
    Admission,
    Event,
    EventOutcome,
    Incoming,
    Job,
    Run,
    RunState,
    Transition,
    event_run_key,
    run_id_for,
    time_run_key,
    utcnow,
)
from jobwire.params import ParamError, mask_params, resolve_params
from jobwire.store import Intake, Recorded, SlotClaim, Store, StoredJob

log = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any], str], object]
"""Starts a one-shot background task whose exception is logged (`Supervisor.once`)."""

MANUAL_SOURCES = ("api", "rerun")
"""Sources a paused job still accepts: pausing stops schedules and events, not a person's explicit run."""

SUBMIT_CHUNK = 128
"""Events per chunk of `submit_many`: small enough that the first chunk is committed while later
ones are built (1,000 fires due at once are not recorded all at the end) and that building one,
which does not yield, holds the API's requests a few ms at most (256 held them ~25 ms on the 2-core
bench machine), large enough that a chunk is one cheap transaction."""


_IDS = random.Random(os.urandom(32))
"""The random part of event ids and of the run keys of events without a key of their own. Not
`uuid4` (a `getrandom` system call and a UUID object per id, ~5 % of the event loop per HTTP run):
an id must be unique, not secret (callbacks are authenticated by their own HMAC token), so a
generator seeded from the OS once — and again in a forked child, which must not repeat its
parent's ids — is enough."""
os.register_at_fork(after_in_child=lambda: _IDS.seed(os.urandom(32)))


def new_id(prefix: str) -> str:
    """`prefix` and 23 hex digits: the wall clock in microseconds (52 bits, until the year 2112),
    then 40 random bits. Time first, so the rows of a burst land side by side at the right edge of
    the indexes keyed by these ids (events by id, runs by event, a job's generated run keys): with
    wholly random ids, each row of a group commit dirtied a page of its own in each of them, and
    every page dirtied is written to the WAL and synced (docs/performance.md, "Time-ordered ids")."""
    return f"{prefix}{time.time_ns() // 1000:013x}{_IDS.getrandbits(40):010x}"


@dataclass(slots=True)
class _Prepared:
    """An event ready to commit, with what its admission needs afterwards."""

    intake: Intake
    job: Job | None = None
    victims: list[str] = field(default_factory=list)
    received_at: datetime | None = None


def _no_run(event: Event, outcome: EventOutcome, reason: str, run_id: str | None = None) -> _Prepared:
    event.outcome = outcome
    event.reason = reason
    event.run_id = run_id
    return _Prepared(Intake(event, None))


def _event(inc: Incoming, event_id: str, payload: Any = None) -> Event:
    """The event of `inc` that made no run (yet): `_prepare`'s early ends."""
    return Event.received(
        event_id, inc.job, inc.trigger, inc.source, inc.received_at, inc.scheduled_at, inc.input_location,
        payload,
    )


class EventIntake:
    def __init__(
        self,
        jobs: Mapping[str, StoredJob],
        states: RunStates,
        committer: Committer,
        store: Store,
        metrics: Metrics,
        spawn: Spawn,
    ) -> None:
        self.jobs = jobs
        self.states = states
        self.runs = states.runs
        self._events = Children(metrics.events)
        self.active_keys = states.active_keys
        self.slots = states.slots
        self.attempts = states.attempts
        self.committer = committer
        self.store = store
        self.metrics = metrics
        self._active = Children(metrics.runs_active)
        self._spawn = spawn
        self.stopping = False
        """Set when the engine stops: every submit then raises `Unavailable`."""
        self.chains = ChainIndex()
        """The `after` triggers by parent job; the engine rebuilds it when definitions change."""

    async def submit(self, incoming: Incoming, yield_to_launch: bool = True) -> Admission:
        """Record the event (and its run) durably, then dispatch. Returns after the commit, and
        after the run's attempt had its first step (`yield_to_launch`), unless the caller sees to
        that itself: the raw front answers with a callback scheduled behind the attempt's first
        step, which a yield here would cost a step of its whole task for."""
        if self.stopping:
            raise Unavailable("jobwire is shutting down; retry against another replica or after restart")
        prepared = self._prepare(incoming)
        try:
            rec = await self.committer.record(prepared.intake)
        except BaseException:
            self._unreserve(prepared)
            raise
        admission, launched = self._admit(prepared, rec)
        if launched and yield_to_launch:
            # Let the attempt start before the caller answers its producer (the HTTP response, the
            # broker ack): the job starting is what the latency budget is for; the answer can wait
            # the ~0.3 ms the target needs to hand it over.
            await asyncio.sleep(0)
        return admission

    async def submit_many(self, incomings: list[Incoming]) -> list[Admission | BaseException]:
        """`submit` for a batch (time triggers due together): no task or coroutine per event, and
        chunks of `SUBMIT_CHUNK`, so the first chunk is being committed while the next is built.
        One result per event, in order: its admission, or the error that kept it from the store."""
        if self.stopping:
            raise Unavailable("jobwire is shutting down; retry against another replica or after restart")
        chunks: list[asyncio.Future[list[Admission | BaseException]]] = []
        for i in range(0, len(incomings), SUBMIT_CHUNK):
            prepared = [self._prepare(inc) for inc in incomings[i : i + SUBMIT_CHUNK]]
            futures = [self.committer.enqueue(p.intake) for p in prepared]
            chunks.append(asyncio.ensure_future(self._admit_chunk(prepared, futures)))
            await asyncio.sleep(0)  # the committer takes this chunk while the next one is built
        return [adm for chunk in await asyncio.gather(*chunks) for adm in chunk]

    async def _admit_chunk(
        self, prepared: list[_Prepared], futures: list[asyncio.Future[Recorded]]
    ) -> list[Admission | BaseException]:
        recorded = await asyncio.gather(*futures, return_exceptions=True)
        out: list[Admission | BaseException] = []
        for p, rec in zip(prepared, recorded, strict=True):
            if isinstance(rec, BaseException):
                self._unreserve(p)
                out.append(rec)
            else:
                out.append(self._admit(p, rec)[0])
        return out

    def _prepare(self, inc: Incoming) -> _Prepared:
        """Everything before the commit, without yielding: the event, the run key, the concurrency
        decision, the run — reserved (its key and slot) so the next event sees it in its decision."""
        # The event is built once its fields are known: at one of the early ends below (`_event`),
        # or with its payload, run and input location on the run's path (three assignments fewer)
        event_id = new_id("e")
        given, where = (inc.params, "params") if inc.params is not None else (inc.payload, "payload")
        if inc.problem is not None:  # a message the source could not read: recorded, not run
            bad = unstorable(given, where)
            event = _event(inc, event_id, None if bad is not None else _json_safe(given))
            return _no_run(event, EventOutcome.invalid, inc.problem)
        bad = unstorable(given, where)
        if bad is None and inc.event_key is not None:
            bad = unstorable(inc.event_key, "event key")
        if bad is not None:  # refused alone: it must never reach (and fail) the group commit
            return _no_run(_event(inc, event_id), EventOutcome.invalid, f"{bad[0]}: {bad[1]}")
        stored = self.jobs.get(inc.job or "")
        if stored is None:
            event = _event(inc, event_id, _json_safe(inc.payload))
            return _no_run(event, EventOutcome.invalid, f"no job named {inc.job!r}")
        job = stored.job
        supplied = (
            inc.params if inc.params is not None else inc.payload if isinstance(inc.payload, dict) else None
        )
        payload = _mask_payload(job, inc.params if inc.params is not None else inc.payload)
        if stored.paused and inc.source not in MANUAL_SOURCES:
            return _no_run(_event(inc, event_id, payload), EventOutcome.paused, "job is paused")
        trig = job.trigger(inc.trigger)
        try:
            params = resolve_params(
                job, supplied, trig.params if trig is not None else None, strict=inc.params is not None
            )
        except ParamError as exc:
            return _no_run(_event(inc, event_id, payload), EventOutcome.invalid, str(exc))
        if inc.scheduled_at is not None and inc.source in ("cron", "interval", "at"):
            key = time_run_key(job.name, inc.trigger, inc.scheduled_at)
        else:
            key = event_run_key(job.name, inc.trigger, inc.event_key or new_id("k"))
        existing = self.active_keys.get(key)
        if existing is not None:
            return _no_run(
                _event(inc, event_id, payload),
                EventOutcome.duplicate,
                f"run key already has run {existing}",
                run_id=existing,
            )
        ckey = str(params.get(job.concurrency.key)) if job.concurrency.key else None
        decision, victims = self.slots.decide(job, ckey)
        if decision == Decision.skip:
            return _no_run(
                _event(inc, event_id, payload),
                EventOutcome.overlap,
                f"concurrency policy forbid: already running {', '.join(victims)}",
            )
        if params:
            location = inc.input_location or _text(params.get("input_location"))
            environment = inc.environment or _text(params.get("environment")) or job.environment
        else:  # no parameters to read them from
            location, environment = inc.input_location, inc.environment or job.environment
        now = utcnow()
        state = RunState.queued if decision == Decision.queue else RunState.pending
        run = Run.recorded(
            id=run_id_for(key),
            key=key,
            job=job.name,
            trigger=inc.trigger,
            event_id=event_id,
            state=state,
            params=params,
            concurrency_key=ckey,
            created_at=now,
            scheduled_at=inc.scheduled_at,
            input_location=location,
            environment=environment,
            history=[Transition.made(state, now, f"event {event_id} from {inc.source}", 1)],
        )
        if inc.scheduled_at is not None and inc.scheduled_at > now and inc.source in TIME_SOURCES:
            run.not_before = inc.scheduled_at  # recorded ahead of its due time (`scheduler.py`)
        event = Event.received(
            event_id, inc.job, inc.trigger, inc.source, inc.received_at, inc.scheduled_at, location,
            payload, run.id,
        )
        self.active_keys[key] = run.id
        claim = None
        if state == RunState.queued:
            self.slots.enqueue(job.name, ckey, run.id)
        else:
            self.slots.occupy(job.name, ckey, run.id, now)
            if self.store.shared and job.concurrency.limit is not None:  # decided again in the store
                claim = SlotClaim(job.concurrency.limit, job.concurrency.policy.value)
        return _Prepared(Intake(event, run, claim), job, victims, inc.received_at)

    def _unreserve(self, p: _Prepared) -> None:
        run = p.intake.run
        if run is not None:
            self.active_keys.pop(run.key, None)
            self.slots.release(run.job, run.concurrency_key, run.id)

    def _admit(self, p: _Prepared, rec: Recorded) -> tuple[Admission, bool]:
        """After the commit: the run is durable, so it becomes active and is launched (unless
        queued). Returns the admission and whether an attempt was launched."""
        event, run = rec.event, p.intake.run
        # `_value_`, not the `value` property (two Python-level calls), on a per-run path
        self._events(event.source, event.outcome._value_).inc()
        if run is None or p.job is None:  # recorded without a run: invalid, paused, duplicate, overlap
            if event.outcome == EventOutcome.invalid:
                log.warning("invalid event", event_id=event.id, job=event.job, reason=event.reason)
            existing = self.runs.get(event.run_id) if event.run_id else None
            return Admission.of(event, existing.snapshot() if existing else None), False
        if event.outcome != EventOutcome.run:  # the store found the key taken or no free slot (replicas)
            self._unreserve(p)
            return Admission.of(event, rec.run), False
        if rec.run is not None and rec.run.state == RunState.queued != run.state:
            # the store queued it: the job's slots are held by runs of other replicas
            self.slots.release(run.job, run.concurrency_key, run.id)
            run.state, run.history = rec.run.state, rec.run.history
            self.slots.enqueue(run.job, run.concurrency_key, run.id)
        if rec.victims:  # the store replaced runs of other replicas too
            p.victims += [v for v in rec.victims if v not in p.victims]
        self.runs[run.id] = run
        self._active(run.state._value_).inc()
        self.states.publish(run)
        for victim in p.victims:
            self._spawn(self.states.cancel(victim, f"replaced by run {run.id}"), "jobwire-replace")
        answer = run.snapshot()  # the run as recorded, whatever its attempt does next
        if run.state != RunState.pending:
            return Admission.of(event, answer), False
        self.attempts.launch(run, p.job, received_at=p.received_at)
        return Admission.of(event, answer), True

    # ------------------------------------------------------------------ chaining
    def chain(self, parent: Run) -> None:
        """`parent` ended: hand in the events of the `after` triggers waiting for its job, linked
        to its final state so they commit in the same transaction (`engine/chains.py`)."""
        incomings = self.chains.events_after(parent)
        if not incomings:
            return
        prepared = [self._prepare(inc) for inc in incomings]
        futures = self.committer.link(parent, [p.intake for p in prepared])
        self._spawn(self._admit_chunk(prepared, futures), "jobwire-chain")

    # ------------------------------------------------------------------ manual runs (API / CLI)
    async def trigger(
        self,
        job: str,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        source: str = "api",
        yield_to_launch: bool = True,
    ) -> Admission:
        """Manual run (API / CLI). Raises JobNotFound, InvalidParams (422 naming the parameter)."""
        stored = self.jobs.get(job)
        adm = await self.submit(
            Incoming.manual(job, source, params, idempotency_key),
            yield_to_launch,
        )
        if stored is None:
            raise JobNotFound(f"no job named {job!r} (event {adm.event.id} recorded as invalid)")
        if adm.event.outcome == EventOutcome.invalid:
            raise InvalidParams(adm.event.reason or "invalid parameters")
        if adm.event.outcome == EventOutcome.duplicate and adm.run is None and adm.event.run_id:
            adm.run = await self.store.get_run(adm.event.run_id)
        return adm

    async def rerun(self, run_id: str, idempotency_key: str | None = None) -> Admission:
        """A new run of a run's job with its parameters (an event of source `rerun`)."""
        orig = await self.states.get_run(run_id)
        if orig.job not in self.jobs:
            raise JobNotFound(f"job {orig.job!r} of run {run_id} is no longer defined")
        adm = await self.submit(
            Incoming(
                job=orig.job,
                trigger="rerun",
                source="rerun",
                params=orig.params,
                event_key=idempotency_key or f"{run_id}/{uuid.uuid4().hex[:12]}",
                input_location=orig.input_location,
            )
        )
        if adm.event.outcome == EventOutcome.invalid:
            raise InvalidParams(adm.event.reason or "invalid parameters")
        if adm.run is None and adm.event.run_id:
            adm.run = await self.store.get_run(adm.event.run_id)
        return adm


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_safe(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool) or (type(value) is dict and not value):
        return value  # a time trigger's fire, a trigger without a body: nothing to check
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _mask_payload(job: Job, payload: Any) -> Any:
    """Events keep their payload for lineage, with secret parameters masked."""
    if isinstance(payload, dict):
        # an empty body is stored as it is: nothing to mask, nothing unsafe
        return _json_safe(mask_params(job, payload)) if payload else payload
    return _json_safe(payload)


__all__ = ["MANUAL_SOURCES", "SUBMIT_CHUNK", "EventIntake", "Spawn"]
