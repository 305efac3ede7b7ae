"""The engine: event → recorded run → dispatch → watch → status.

Every way in (time triggers, API, webhooks, brokers) ends in `submit`, which decides the
concurrency outcome, writes the event and its run in one group-committed transaction and only
then dispatches. Every state change is persisted and published as one status document.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from jobwire.config import Settings
from jobwire.engine.committer import Committer
from jobwire.engine.disk import StopIncomplete, unsaved_at_stop
from jobwire.engine.dispatch import Attempts
from jobwire.engine.fires import PendingFires
from jobwire.engine.metrics import Metrics
from jobwire.engine.policies import Decision, Slots
from jobwire.engine.runlogs import RunLogs
from jobwire.engine.scheduler import TimeScheduler, missed_fires
from jobwire.engine.secret import load_secret
from jobwire.engine.status import StatusHub, Subscription, document
from jobwire.engine.supervisor import Supervisor
from jobwire.engine.webhooks import Delivery, WebhookRefused, precheck, verify_body
from jobwire.jobfile import JobFileError, load_path
from jobwire.jsonsafe import unstorable
from jobwire.model import (
    Admission,
    Event,
    EventOutcome,
    Incoming,
    Job,
    Run,
    RunError,
    RunState,
    Transition,
    event_run_key,
    run_id_for,
    time_run_key,
    utcnow,
)
from jobwire.params import ParamError, mask_params, resolve_params
from jobwire.signing import ReplayGuard
from jobwire.sinks import build_sinks
from jobwire.store import Intake, PruneRule, Recorded, Store, StoredJob, open_store
from jobwire.targets import build_targets
from jobwire.targets.base import Target

log = structlog.get_logger(__name__)


class EngineError(Exception):
    """Base for errors the API maps to HTTP answers. `status` is the HTTP code, `reason` a short word."""

    status = 400
    reason = "BadRequest"


class JobNotFound(EngineError):
    status = 404
    reason = "JobNotFound"


class RunNotFound(EngineError):
    status = 404
    reason = "RunNotFound"


class Conflict(EngineError):
    status = 409
    reason = "Conflict"


class InvalidParams(EngineError):
    status = 422
    reason = "InvalidParameters"


class Forbidden(EngineError):
    status = 403
    reason = "Forbidden"


class Unavailable(EngineError):
    status = 503
    reason = "ShuttingDown"


_WEBHOOK_ERRORS: dict[int, type[EngineError]] = {403: Forbidden, 404: JobNotFound}


MANUAL_SOURCES = ("api", "rerun")
"""Sources a paused job still accepts: pausing stops schedules and events, not a person's explicit run."""


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:23]


SUBMIT_CHUNK = 256
"""Events per chunk of `submit_many`: small enough that the first chunk is committed while later
ones are built (1,000 fires due at once are not recorded all at the end), large enough that a
chunk is one cheap transaction."""


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


class Engine:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(settings.effective_database_url)
        self.metrics = Metrics()
        self.registry: CollectorRegistry = self.metrics.registry
        self.logs = RunLogs(settings.data_dir / "logs", settings.run_log_max_bytes)
        self.targets: dict[str, Target] = build_targets(settings)
        for target in self.targets.values():
            target.bind(run_exists=self._run_exists, jobs=self._job_defs, registry=self.registry)
        self.hub = StatusHub(build_sinks(settings), self.metrics, buffer=settings.stream_buffer)
        self.supervisor = Supervisor(self.metrics)
        self.committer = Committer(self.store, self.metrics)
        self.pending_fires = PendingFires(self.submit_many, self._time_job, self.metrics)
        self.scheduler = TimeScheduler(self._fire_batch, self.metrics.lateness_seconds.observe)
        self.slots = Slots()
        self.attempts = Attempts(self)
        self.jobs: dict[str, StoredJob] = {}
        self.runs: dict[str, Run] = {}
        """Active runs (queued, pending, running) by id; finished runs are only in the store."""
        self.active_keys: dict[str, str] = {}
        self.replay_guard = ReplayGuard(capacity=100_000, ttl=3600)
        self._secret = b""
        self._stopping = False
        self._ready = False
        self._file_mtimes: dict[Path, float] = {}
        self._touched: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._secret = load_secret(self.settings.data_dir)  # raises SecretKeyError
        await self.store.open()
        try:
            self.attempts.journal.open()  # after the store's lock: it rewrites the file
            self.committer.start(self.supervisor.spawn)
            for target in self.targets.values():
                await target.start()
            await self.hub.start(self.supervisor.spawn_optional)
            await self._load_jobs()
            await self._reconcile()
            await self._catch_up()
            self.scheduler.start(self.supervisor.spawn)
            self.supervisor.loop("jobwire-fire-retry", self.pending_fires.run, critical=False)
            self.supervisor.loop("jobwire-retention", self._retention_loop)
            if self.settings.reload and self.settings.jobs:
                self.supervisor.loop("jobwire-reload", self._reload_loop)
        except BaseException:
            self.attempts.journal.close()
            await self.store.close()
            raise
        # What startup built (job definitions, compiled schedules, imported modules) lives as long
        # as the process: move it out of the cyclic GC's reach, so a full collection scans only
        # what runs allocate — with 10,000 jobs a gen-2 pass otherwise stalls the loop for tens of ms.
        gc.collect()
        gc.freeze()
        self._ready = True
        log.info("engine started", jobs=len(self.jobs), active_runs=len(self.runs))

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping: no new runs", running=self.attempts.count)
        await self.scheduler.stop()
        await self.supervisor.cancel_all()  # retention, reload, fire retries; committer and sinks: below
        if self.pending_fires:
            log.warning(
                "time-trigger fires not recorded at shutdown; the next start catches up per job policy",
                **self.pending_fires.summary(),
            )
        await self.attempts.shutdown(self.settings.shutdown_grace.total_seconds())
        unsaved = await self._flush_at_stop()
        await self.hub.stop()
        for target in self.targets.values():
            try:
                await target.close()
            except Exception as exc:
                log.warning("target did not close cleanly", target=target.kind, error=str(exc))
        later = await self._flush_at_stop()
        await self.committer.stop()
        self.attempts.journal.close()
        await self.store.close()
        self._ready = False
        log.info("stopped")
        if unsaved or later:
            raise StopIncomplete(unsaved or later or "")

    async def _flush_at_stop(self) -> str | None:
        """Flush; when the store cannot write (a full disk), drop what waits so the stop ends, and
        say what was not saved (the next start reconciles those runs, as after a crash)."""
        try:
            await self.committer.flush()
        except Exception as exc:
            events, runs = self.committer.abandon(exc)
            log.error("state changes not saved at stop", error=str(exc), events=events, runs=runs)
            return unsaved_at_stop(events, runs, str(exc), self.settings.data_dir)
        return None

    def _spawn(self, coro: Any, name: str) -> None:
        """A one-shot background task: its exception is retrieved and logged; `stop` cancels it."""
        self.supervisor.once(coro, name)

    def health(self) -> dict[str, Any]:
        """What `/readyz` shows: ready or not, why not, every supervised task, store-write health."""
        tasks = self.supervisor.health()
        store = {**self.committer.health, **self.pending_fires.summary()}
        problems = [
            f"task {t.name} is failing: {t.last_error}" for t in tasks if t.critical and t.state == "failing"
        ]
        if store["failing"]:
            problems.append(f"store writes are failing: {store['last_error']}")
        if not self.ready:
            problems.insert(0, "stopping" if self._stopping else "starting")
        states = [t.as_dict() for t in tasks]
        for target in self.targets.values():  # its own watches and cleanup loops, retrying on their own
            for name, error in target.health().items():
                state = "failing" if error else "running"
                states.append(
                    {"task": name, "critical": False, "state": state, "restarts": 0, "last_error": error}
                    | {"consecutive_failures": 0, "failing_since": None, "retry_in": None}
                )
        return {"ready": not problems, "problems": problems, "tasks": states, "store": store}

    def _time_job(self, name: str) -> tuple[Job, bool] | None:
        stored = self.jobs.get(name)
        return (stored.job, stored.paused) if stored is not None else None

    async def _run_exists(self, run_id: str) -> bool:
        return run_id in self.runs or await self.store.get_run(run_id) is not None

    def _job_defs(self) -> list[Job]:
        return [s.job for s in self.jobs.values()]

    def callback_token(self, run_id: str) -> str:
        return hmac.new(self._secret, run_id.encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ jobs
    async def _load_jobs(self) -> None:
        file_jobs: list[tuple[Job, str]] = []
        for path in self.settings.jobs:
            file_jobs.extend(load_path(path))  # raises JobFileError listing every problem
            if self.settings.reload:
                self._file_mtimes.update(_mtimes(path))
        stored = {s.job.name: s for s in await self.store.list_jobs()}
        seen = set()
        for job, origin in file_jobs:
            seen.add(job.name)
            prev = stored.get(job.name)
            if prev is None or prev.job != job or prev.origin != origin:
                stored[job.name] = await self.store.save_job(job, origin)
        for name, s in list(stored.items()):
            if s.origin.startswith("file:") and name not in seen:
                await self.store.delete_job(name)
                del stored[name]
        self.jobs = stored
        for s in stored.values():
            self.scheduler.set_job(s.job, s.paused)
        self.metrics.jobs.set(len(self.jobs))

    async def reload_files(self) -> list[str]:
        """Re-read job files; on errors keep the current definitions and return the messages."""
        try:
            file_jobs: list[tuple[Job, str]] = []
            for path in self.settings.jobs:
                file_jobs.extend(load_path(path))
        except JobFileError as exc:
            msgs = [str(e) for e in exc.errors]
            log.error("job files have errors; keeping the current definitions", errors=msgs)
            return msgs
        names = set()
        for job, origin in file_jobs:
            names.add(job.name)
            cur = self.jobs.get(job.name)
            if cur is None or cur.job != job:
                await self._install(await self.store.save_job(job, origin))
        for name, s in list(self.jobs.items()):
            if s.origin.startswith("file:") and name not in names:
                await self.store.delete_job(name)
                self.jobs.pop(name, None)
                self.scheduler.remove_job(name)
        self.metrics.jobs.set(len(self.jobs))
        log.info("job files reloaded", jobs=len(names))
        return []

    async def _reload_loop(self) -> None:
        """Development mode: re-read job files when they change. Checks mtimes once a second —
        the only periodic check in jobwire, and only with `reload` on."""
        while True:
            await asyncio.sleep(1)
            current: dict[Path, float] = {}
            for path in self.settings.jobs:
                current.update(_mtimes(path))
            if current != self._file_mtimes:
                # remembered first: a file that breaks the reload is not re-read until it changes
                # again; the error goes to the supervisor (logged, shown in /readyz, loop restarted)
                self._file_mtimes = current
                await self.reload_files()

    async def _install(self, stored: StoredJob) -> None:
        self.jobs[stored.job.name] = stored
        self.scheduler.set_job(stored.job, stored.paused)

    async def put_job(self, job: Job, origin: str = "api") -> StoredJob:
        cur = self.jobs.get(job.name)
        if cur is not None and cur.origin.startswith("file:") and origin == "api":
            raise Conflict(
                f"job {job.name!r} is defined in {cur.origin[5:]}; edit that file, not the API definition"
            )
        stored = await self.store.save_job(job, origin)
        await self._install(stored)
        self.metrics.jobs.set(len(self.jobs))
        return stored

    def get_job(self, name: str) -> StoredJob:
        stored = self.jobs.get(name)
        if stored is None:
            raise JobNotFound(f"no job named {name!r}")
        return stored

    async def delete_job(self, name: str) -> None:
        cur = self.get_job(name)
        if cur.origin.startswith("file:"):
            raise Conflict(f"job {name!r} is defined in {cur.origin[5:]}; remove it from that file")
        await self.store.delete_job(name)
        self.jobs.pop(name, None)
        self.scheduler.remove_job(name)
        self.metrics.jobs.set(len(self.jobs))

    async def pause(self, name: str) -> StoredJob:
        return await self._set_paused(name, True)

    async def resume(self, name: str) -> StoredJob:
        return await self._set_paused(name, False)

    async def _set_paused(self, name: str, paused: bool) -> StoredJob:
        self.get_job(name)
        stored = await self.store.set_paused(name, paused)
        if stored is None:
            raise JobNotFound(f"no job named {name!r}")
        await self._install(stored)
        return stored

    # ------------------------------------------------------------------ intake
    def _fire_batch(self, batch: list[Incoming]) -> None:
        self._spawn(self._submit_quietly(batch), "jobwire-fire")

    async def _submit_quietly(self, batch: list[Incoming]) -> None:
        """Record a batch of due fires; those the store cannot take (a full disk) are kept and
        retried with their scheduled times (`PendingFires`) — the clock goes on meanwhile."""
        try:
            results: list[Admission | BaseException] = await self.submit_many(batch)
        except Unavailable:  # shutting down: the next start catches up per each job's policy
            log.warning("time triggers not recorded: shutting down", count=len(batch))
            return
        except Exception as exc:
            results = [exc] * len(batch)
        failed = [inc for inc, res in zip(batch, results, strict=True) if isinstance(res, BaseException)]
        if failed:
            error = next(r for r in results if isinstance(r, BaseException))
            log.error(
                "time triggers could not be recorded; kept and retried until the store takes them",
                count=len(failed),
                jobs=sorted({inc.job or "" for inc in failed})[:10],
                error=str(error),
            )
            self.pending_fires.add(failed)
        else:
            self.pending_fires.wake()  # the store takes writes: retry what waits now

    async def submit(self, incoming: Incoming) -> Admission:
        """Record the event (and its run) durably, then dispatch. Returns after the commit."""
        if self._stopping:
            raise Unavailable("jobwire is shutting down; retry against another replica or after restart")
        prepared = self._prepare(incoming)
        try:
            rec = await self.committer.record(prepared.intake)
        except BaseException:
            self._unreserve(prepared)
            raise
        admission, launched = self._admit(prepared, rec)
        if launched:
            # Let the attempt start before the caller answers its producer (the HTTP response, the
            # broker ack): the job starting is what the latency budget is for; the answer can wait
            # the ~0.3 ms the target needs to hand it over.
            await asyncio.sleep(0)
        return admission

    async def submit_many(self, incomings: list[Incoming]) -> list[Admission | BaseException]:
        """`submit` for a batch (time triggers due together): no task or coroutine per event, and
        chunks of `SUBMIT_CHUNK`, so the first chunk is being committed while the next is built."""
        if self._stopping:
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
        event = Event(
            id=new_id("e"),
            job=inc.job,
            trigger=inc.trigger,
            source=inc.source,
            received_at=inc.received_at,
            scheduled_at=inc.scheduled_at,
            input_location=inc.input_location,
        )
        given, where = (inc.params, "params") if inc.params is not None else (inc.payload, "payload")
        bad = unstorable(given, where)
        if bad is None and inc.event_key is not None:
            bad = unstorable(inc.event_key, "event key")
        if bad is not None:  # refused alone: it must never reach (and fail) the group commit
            return _no_run(event, EventOutcome.invalid, f"{bad[0]}: {bad[1]}")
        stored = self.jobs.get(inc.job or "")
        if stored is None:
            event.payload = _json_safe(inc.payload)
            return _no_run(event, EventOutcome.invalid, f"no job named {inc.job!r}")
        job = stored.job
        supplied = (
            inc.params if inc.params is not None else inc.payload if isinstance(inc.payload, dict) else None
        )
        event.payload = _mask_payload(job, inc.params if inc.params is not None else inc.payload)
        if stored.paused and inc.source not in MANUAL_SOURCES:
            return _no_run(event, EventOutcome.paused, "job is paused")
        trig = job.trigger(inc.trigger)
        try:
            params = resolve_params(
                job, supplied, trig.params if trig is not None else None, strict=inc.params is not None
            )
        except ParamError as exc:
            return _no_run(event, EventOutcome.invalid, str(exc))
        if inc.scheduled_at is not None and inc.source in ("cron", "interval", "at"):
            key = time_run_key(job.name, inc.trigger, inc.scheduled_at)
        else:
            key = event_run_key(job.name, inc.trigger, inc.event_key or new_id("k"))
        existing = self.active_keys.get(key)
        if existing is not None:
            return _no_run(
                event, EventOutcome.duplicate, f"run key already has run {existing}", run_id=existing
            )
        ckey = str(params.get(job.concurrency.key)) if job.concurrency.key else None
        decision, victims = self.slots.decide(job, ckey)
        if decision == Decision.skip:
            return _no_run(
                event,
                EventOutcome.overlap,
                f"concurrency policy forbid: already running {', '.join(victims)}",
            )
        now = utcnow()
        state = RunState.queued if decision == Decision.queue else RunState.pending
        run = Run(
            id=run_id_for(key),
            key=key,
            job=job.name,
            trigger=inc.trigger,
            event_id=event.id,
            state=state,
            params=params,
            concurrency_key=ckey,
            created_at=now,
            scheduled_at=inc.scheduled_at,
            input_location=inc.input_location,
            environment=job.environment,
            history=[Transition(state=state, at=now, reason=f"event {event.id} from {inc.source}")],
        )
        event.run_id = run.id
        self.active_keys[key] = run.id
        if state == RunState.queued:
            self.slots.enqueue(job.name, ckey, run.id)
        else:
            self.slots.occupy(job.name, ckey, run.id, now)
        return _Prepared(Intake(event, run), job, victims, inc.received_at)

    def _unreserve(self, p: _Prepared) -> None:
        run = p.intake.run
        if run is not None:
            self.active_keys.pop(run.key, None)
            self.slots.release(run.job, run.concurrency_key, run.id)

    def _admit(self, p: _Prepared, rec: Recorded) -> tuple[Admission, bool]:
        """After the commit: the run is durable, so it becomes active and is launched (unless
        queued). Returns the admission and whether an attempt was launched."""
        event, run = rec.event, p.intake.run
        self.metrics.events.labels(event.source, event.outcome.value).inc()
        if run is None or p.job is None:  # recorded without a run: invalid, paused, duplicate, overlap
            if event.outcome == EventOutcome.invalid:
                log.warning("invalid event", event_id=event.id, job=event.job, reason=event.reason)
            existing = self.runs.get(event.run_id) if event.run_id else None
            return Admission(event=event, run=existing.snapshot() if existing else None), False
        if event.outcome != EventOutcome.run:  # the store found the key taken (another replica, a restart)
            self._unreserve(p)
            return Admission(event=event, run=rec.run), False
        self.runs[run.id] = run
        self.metrics.runs_active.labels(run.state.value).inc()
        self.publish(run)
        for victim in p.victims:
            self._spawn(self.cancel(victim, f"replaced by run {run.id}"), "jobwire-replace")
        answer = run.snapshot()  # the run as recorded, whatever its attempt does next
        if run.state != RunState.pending:
            return Admission(event=event, run=answer), False
        self.attempts.launch(run, p.job, received_at=p.received_at)
        return Admission(event=event, run=answer), True

    async def trigger(
        self, job: str, params: dict[str, Any], idempotency_key: str | None = None, source: str = "api"
    ) -> Admission:
        """Manual run (API / CLI). Raises JobNotFound, InvalidParams (422 naming the parameter)."""
        stored = self.jobs.get(job)
        adm = await self.submit(
            Incoming(job=job, trigger=source, source=source, params=params, event_key=idempotency_key)
        )
        if stored is None:
            raise JobNotFound(f"no job named {job!r} (event {adm.event.id} recorded as invalid)")
        if adm.event.outcome == EventOutcome.invalid:
            raise InvalidParams(adm.event.reason or "invalid parameters")
        if adm.event.outcome == EventOutcome.duplicate and adm.run is None and adm.event.run_id:
            adm.run = await self.store.get_run(adm.event.run_id)
        return adm

    def webhook_precheck(self, job: str, trigger_id: str | None, headers: dict[str, str]) -> Delivery:
        """What can be refused before the body is read: an unknown job or trigger, an unset
        secret, a missing or malformed signature header or delivery id."""
        try:
            return precheck(self.get_job(job).job, trigger_id, headers)
        except WebhookRefused as exc:
            raise _WEBHOOK_ERRORS.get(exc.status, EngineError)(str(exc)) from None

    async def webhook(
        self,
        job: str,
        trigger_id: str | None,
        body: bytes,
        headers: dict[str, str],
        checked: Delivery | None = None,
    ) -> Admission:
        """Verify the HMAC signature over delivery id, timestamp and body, then submit. The run
        key comes from the (signed) delivery id: a replayed delivery is a recorded duplicate (409)."""
        d = checked or self.webhook_precheck(job, trigger_id, headers)
        try:
            verify_body(d, body)
        except WebhookRefused as exc:
            raise Forbidden(str(exc)) from None
        replayed = self.replay_guard.seen(f"{job}/{d.trigger_id}/{d.delivery}", time.time())
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        except RecursionError:
            raise EngineError("the webhook body is nested too deeply") from None
        adm = await self.submit(
            Incoming(job=job, trigger=d.trigger_id, source="webhook", payload=payload, event_key=d.delivery)
        )
        if replayed or adm.event.outcome == EventOutcome.duplicate:
            raise Conflict(
                f"delivery {d.delivery!r} was already received (event {adm.event.id} recorded as duplicate)"
            )
        return adm

    # ------------------------------------------------------------------ runs
    def publish(self, run: Run, block: Any = None) -> None:
        if not self.hub.listening:
            self.hub.skip()
            return
        stored = self.jobs.get(run.job)
        self.hub.publish(document(run, stored.job if stored else None, block))

    def transition(self, run: Run, state: RunState, reason: str | None = None, block: Any = None) -> None:
        """Change a run's state: persisted (group commit) and published on every sink."""
        if run.state != state:
            if run.state in (RunState.queued, RunState.pending, RunState.running):
                self.metrics.runs_active.labels(run.state.value).dec()
            if state in (RunState.queued, RunState.pending, RunState.running):
                self.metrics.runs_active.labels(state.value).inc()
        run.state = state
        # built from the engine's own typed values: no validation pass needed
        run.history.append(
            Transition.model_construct(state=state, at=utcnow(), reason=reason, attempt=run.attempt)
        )
        self.committer.update(run)
        self.publish(run, block)

    def finished(self, run: Run) -> None:
        """Bookkeeping once a run is terminal: free its slot and start whoever waits for it."""
        self.runs.pop(run.id, None)
        self.active_keys.pop(run.key, None)
        self._touched.add(run.job)
        self.logs.finish(run.id)
        self.metrics.runs_finished.labels(run.job, run.state.value).inc()
        if run.started_at and run.finished_at:
            stored = self.jobs.get(run.job)
            kind = stored.job.target.type if stored else "unknown"
            self.metrics.run_seconds.labels(kind).observe(
                (run.finished_at - run.started_at).total_seconds()
            )
        self.slots.release(run.job, run.concurrency_key, run.id)
        self._promote(run.job, run.concurrency_key)

    def _promote(self, job_name: str, ckey: str | None) -> None:
        stored = self.jobs.get(job_name)
        if stored is None or self._stopping:
            return
        while (nxt := self.slots.next_waiting(stored.job, ckey)) is not None:
            run = self.runs.get(nxt)
            if run is None:
                continue
            self.slots.occupy(job_name, ckey, run.id, run.created_at)
            self.transition(run, RunState.pending, "a concurrency slot is free")
            self.attempts.launch(run, stored.job)

    async def get_run(self, run_id: str) -> Run:
        run = self.runs.get(run_id) or await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> Run:
        run = self.runs.get(run_id)
        if run is None:
            stored = await self.store.get_run(run_id)
            if stored is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            raise Conflict(f"run {run_id} already ended ({stored.state.value})")
        if not await self.attempts.cancel(run, reason):
            # queued, or pending before its first/next attempt: nothing runs on the target
            run.finished_at = utcnow()
            self.transition(run, RunState.cancelled, reason)
            self.finished(run)
        await self.committer.flush()
        return run

    async def rerun(self, run_id: str, idempotency_key: str | None = None) -> Admission:
        orig = await self.get_run(run_id)
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

    async def callback(
        self, run_id: str, token: str, ok: bool, message: str | None, data: dict[str, Any]
    ) -> Run:
        if not hmac.compare_digest(token.encode(), self.callback_token(run_id).encode()):
            raise Forbidden("wrong callback token for this run")
        run = self.runs.get(run_id)
        if run is None:
            stored = await self.store.get_run(run_id)
            if stored is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            raise Conflict(f"run {run_id} already ended ({stored.state.value})")
        self.attempts.deliver_callback(run, ok, message, data)
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

    def subscribe(self, after: int | None = None) -> Subscription:
        """Every status document from now on (or after sequence number `after`, as far as the
        hub still keeps them); subscribed when this returns."""
        return self.hub.subscribe(after)

    # ------------------------------------------------------------------ restart
    async def _reconcile(self) -> None:
        """Resume what was in flight when jobwire last stopped."""
        active = await self.store.active_runs()
        for run in active:
            stored = self.jobs.get(run.job)
            if stored is None:
                run.finished_at = utcnow()
                run.error = RunError(message="its job is no longer defined", reason="JobDeleted")
                self.transition(run, RunState.failed, "job deleted while jobwire was down")
                continue
            self.runs[run.id] = run
            self.active_keys[run.key] = run.id
            self.metrics.runs_active.labels(run.state.value).inc()
            if run.state == RunState.queued:
                self.slots.enqueue(run.job, run.concurrency_key, run.id)
                continue
            self.slots.occupy(run.job, run.concurrency_key, run.id, run.created_at)
            resumed = run.state == RunState.running or self.attempts.was_launched(run)
            log.info("resuming run", run_id=run.id, job=run.job, state=run.state.value, resumed=resumed)
            self.attempts.launch(run, stored.job, resumed=resumed)
        for stored in self.jobs.values():
            keys = {r.concurrency_key for r in self.runs.values() if r.job == stored.job.name}
            for k in keys:
                self._promote(stored.job.name, k)
        await self.committer.flush()

    async def _catch_up(self) -> None:
        """Fire times missed while jobwire was down, per each job's catch-up policy."""
        now = utcnow()
        last_fires = await self.store.last_fires()  # one read, not one per trigger
        due: list[Incoming] = []
        for stored in self.jobs.values():
            if stored.paused:
                continue
            job = stored.job
            for tid, trig in zip(job.trigger_ids(), job.triggers, strict=True):
                if trig.type not in ("cron", "interval", "at"):
                    continue
                last = last_fires.get((job.name, tid))
                for t in missed_fires(trig, last, now, job.catchup):
                    due.append(Incoming(job=job.name, trigger=tid, source=trig.type, scheduled_at=t))
        if due:
            log.info("catching up missed fire times", count=len(due))
            for result in await self.submit_many(due):
                if isinstance(result, BaseException):
                    raise result

    # ------------------------------------------------------------------ retention
    async def sweep(self, only_touched: bool = False) -> int:
        """Apply each job's retention: keep the newest N and drop what is past the TTL.
        `only_touched`: just the jobs whose runs ended since the last sweep (the hourly full sweep
        catches TTL expiry of quiet jobs), so an idle jobwire with 10,000 jobs writes nothing.
        One store call per sweep: one read, and one write transaction only if something goes."""
        now = utcnow()
        touched, self._touched = self._touched, set()
        rules = [
            PruneRule(s.job.name, s.job.retention.keep, now - s.job.retention.ttl)
            for s in self.jobs.values()
            if not only_touched or s.job.name in touched
        ]
        if not rules:
            return 0
        res = await self.store.prune_jobs(rules)
        for rid in res.runs:
            self.logs.delete(rid)
        deleted = len(res.runs)
        self.metrics.retention_deleted.labels("run").inc(deleted)
        self.metrics.retention_deleted.labels("event").inc(res.events)
        if deleted:
            log.info("retention sweep", runs_deleted=deleted)
        return deleted

    async def _retention_loop(self) -> None:
        last_full = time.monotonic() - 3600 + self.settings.retention_interval.total_seconds()
        while True:
            await asyncio.sleep(self.settings.retention_interval.total_seconds())
            try:
                full = time.monotonic() - last_full >= 3600
                await self.sweep(only_touched=not full)
                if full:
                    last_full = time.monotonic()
            except Exception as exc:
                log.error("retention sweep failed", error=str(exc))


def _mtimes(path: Path) -> dict[Path, float]:
    if path.is_dir():
        return {p: p.stat().st_mtime for p in sorted(path.rglob("*.y*ml"))}
    return {path: path.stat().st_mtime} if path.exists() else {}


def _json_safe(value: Any) -> Any:
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
        return _json_safe(mask_params(job, payload))
    return _json_safe(payload)


__all__ = [
    "Conflict",
    "Engine",
    "EngineError",
    "Forbidden",
    "InvalidParams",
    "JobNotFound",
    "RunNotFound",
    "Unavailable",
]
