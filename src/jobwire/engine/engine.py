"""The engine: event → recorded run → dispatch → watch → status.

Every way in (time triggers, API, webhooks, brokers) ends in `submit`, which decides the
concurrency outcome, writes the event and its run in one group-committed transaction and only
then dispatches. Every state change is persisted and published as one status document.

`Engine` is the facade the API, the CLI and the tests use: it builds the parts, wires them, starts
and stops them, and hands each request to the part that owns it —

* `intake.EventIntake`: events in (submit, submit_many, trigger, rerun); `webhooks.Webhooks`:
  signed deliveries; `fires.PendingFires`: time-trigger fires handed in, kept while the store fails;
* `jobs.JobRegistry`: job definitions, job files and their reload;
* `runs.RunStates`: the run state machine, owning the attempts (`dispatch.Attempts`);
* `recovery`: reconcile and catch-up at start; `retention.Retention`: the sweep;
* `build`: the plugs (store, targets, sinks) from settings; `errors`: what callers catch.
* `shared.SharedState`: several replicas on one store — what they share (slots, callback key, jobs, stream).

None of them imports this module (an import-linter contract says so); background loops all run
under the `Supervisor` (logged, restarted with backoff, shown in `/readyz`).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from jobwire.config import Settings
from jobwire.engine import heap
from jobwire.engine.build import bind_sinks, bind_targets, build_plugs
from jobwire.engine.committer import Committer
from jobwire.engine.disk import StopIncomplete, unsaved_at_stop
from jobwire.engine.dispatch import Attempts
from jobwire.engine.errors import (
    Conflict,
    EngineError,
    Forbidden,
    InvalidParams,
    JobNotFound,
    RunNotFound,
    Unavailable,
)
from jobwire.engine.fires import PendingFires
from jobwire.engine.fleet import FleetAttempts
from jobwire.engine.intake import EventIntake
from jobwire.engine.jobs import JobRegistry, warm
from jobwire.engine.metrics import Metrics
from jobwire.engine.outbox import OutboxRelay
from jobwire.engine.recovery import catch_up, reconcile
from jobwire.engine.replicas import Coordinator
from jobwire.engine.retention import Retention
from jobwire.engine.runlogs import RunLogs
from jobwire.engine.runs import RunStates
from jobwire.engine.scheduler import TimeScheduler
from jobwire.engine.secret import CallbackTokens
from jobwire.engine.shared import SharedState
from jobwire.engine.sources import SourceCollector, SourceManager
from jobwire.engine.status import StatusHub, Subscription
from jobwire.engine.supervisor import Supervisor
from jobwire.engine.templates import TemplateJobs, TemplateLookup
from jobwire.engine.webhooks import Delivery, Webhooks
from jobwire.model import Admission, Incoming, Job, Run, utcnow
from jobwire.store import Store, StoredJob
from jobwire.targets.base import Target

log = structlog.get_logger(__name__)


class Engine:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        plugs = build_plugs(settings, store)
        self.store = plugs.store
        self.metrics = Metrics()
        self.registry: CollectorRegistry = self.metrics.registry
        self.logs = RunLogs(settings.data_dir / "logs", settings.run_log_max_bytes)
        self.targets: dict[str, Target] = plugs.targets
        self.hub = StatusHub(plugs.sinks, self.metrics, buffer=settings.stream_buffer)
        self.supervisor = Supervisor(self.metrics)
        self.committer = Committer(self.store, self.metrics)
        self.coordinator = Coordinator(self.store, settings, self.metrics)
        self.tokens = CallbackTokens(self.store)  # several replicas: the key is the store's
        self.scheduler = TimeScheduler(
            self._fire_batch, self.metrics.lateness_seconds.observe, self._prepare, settings.record_ahead
        )
        self.job_registry = JobRegistry(settings, self.store, self.scheduler, self.metrics)
        self.jobs: dict[str, StoredJob] = self.job_registry.jobs
        self.retention = Retention(
            self.store, self.jobs, self.logs, self.metrics, settings.retention_interval.total_seconds()
        )
        self.run_states = RunStates(
            settings,
            self.store,
            self.jobs,
            self.targets,
            self.committer,
            self.hub,
            self.logs,
            self.metrics,
            self.tokens,
            self.retention.touched,
            launcher=FleetAttempts if settings.role == "scheduler" else Attempts,
        )
        self.runs: dict[str, Run] = self.run_states.runs
        """Active runs (queued, pending, running) by id; finished runs are only in the store."""
        self.active_keys = self.run_states.active_keys
        self.slots = self.run_states.slots
        self.attempts = self.run_states.attempts
        self.intake = EventIntake(
            self.jobs, self.run_states, self.committer, self.store, self.metrics, self.supervisor.once
        )
        self.webhooks = Webhooks(self.job_registry.get_job, self.intake.submit)
        self.pending_fires = PendingFires(self.intake.submit_many, self.job_registry.time_job, self.metrics)
        self.templates = TemplateJobs(settings.template_jobs, self.jobs, self._template_lookup, self.put_job)
        self.sources = SourceManager(
            self.jobs, self.supervisor, self.intake.submit_many, prepare=self.templates.resolve
        )
        self.run_states.chain = self.intake.chain
        self.relays = {s.outbox_name: OutboxRelay(self.store, s, self.metrics) for s in self.hub.durable}
        self.hub.outbox = self.committer.outbox
        self.hub.outbox_room = lambda sink: self.relays[sink.outbox_name].room()
        self.committer.outbox_committed = self._outbox_committed
        self.registry.register(SourceCollector(self.sources))
        bind_targets(self.targets.values(), self._run_exists, self.job_registry.job_defs, self.registry)
        bind_sinks(plugs.sinks, self.run_log)
        self.shared = SharedState.over(self)  # several replicas: what they share (engine/shared.py)
        self._stopping = False
        self._ready = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self._ready and not self._stopping

    async def start(self) -> None:
        gc.disable()  # while startup builds what lives as long as the process (engine/heap.py)
        try:
            await self._start()
        finally:
            gc.enable()

    async def _start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.tokens.load(self.settings.data_dir)  # raises SecretKeyError
        await self.store.open()
        try:
            await self.attempts.open(self.supervisor)  # after the store's lock: it rewrites the journal
            self.committer.fencing = self.coordinator
            self.run_states.owner = self.coordinator.replica  # whose pending runs it reads back
            self.attempts.may_launch = self.coordinator.alive
            self.attempts.wait_alive = self.coordinator.wait_alive
            self.attempts.start_deadline = self.coordinator.start_deadline
            if isinstance(self.attempts, FleetAttempts):  # several schedulers: results go to a run's owner
                owners = self.store.run_owners if self.store.shared else None
                self.attempts.place(self.coordinator.replica, owners)
            self.retention.leader = self.coordinator.is_leader
            for target in self.targets.values():
                target.bind_leader(self.coordinator.is_leader)  # Kubernetes cleanup: leader only
            self.committer.start(self.supervisor.spawn)
            for target in self.targets.values():
                await target.start()
            await self.hub.start(self.supervisor.spawn_optional)
            await self.job_registry.load()
            self.intake.chains.rebuild(self.jobs)
            # Registered once the definitions are loaded (100,000 jobs: seconds of the loop, no
            # heartbeat meanwhile); registered before, a load longer than the heartbeat's expiry
            # made the first heartbeat find this replica dead (a shared store: it exited).
            await self.coordinator.register()
            await self.shared.start(self.tokens)  # the shared callback key; LISTEN to the others
            await reconcile(await self.coordinator.own_runs(), self.run_states)
            self.attempts.recovered()  # the fleet launcher: results from before a restart may be applied
            self.coordinator.on_leader = self._lead
            self.coordinator.on_follower = self.scheduler.stop
            self.coordinator.on_orphans = self._adopt
            await self.coordinator.elect()  # the leader catches up and starts the clock
            if not self.coordinator.is_leader():  # a follower's heap: what `upcoming` shows
                self._schedule_all(utcnow())
            self.supervisor.loop("jobwire-replica", self.coordinator.run, critical=True)
            self.supervisor.loop("jobwire-fire-retry", self.pending_fires.run, critical=False)
            self.supervisor.loop("jobwire-retention", self.retention.loop)
            for name, relay in self.relays.items():
                self.supervisor.loop(f"jobwire-outbox-{name}", relay.run)
            await self.sources.start()
            if self.settings.reload and self.settings.jobs:
                self.supervisor.loop("jobwire-reload", self._reload_loop)
        except BaseException:
            await self.supervisor.cancel_all()
            await self.coordinator.stop()
            self.attempts.close()
            await self.store.close()
            raise
        heap.settle()  # freeze what startup built; give back what it freed (engine/heap.py)
        self._ready = True
        log.info("engine started", jobs=len(self.jobs), active_runs=len(self.runs))

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = self.intake.stopping = self.run_states.stopping = True
        log.info("stopping: no new runs", running=self.attempts.count)
        await self.scheduler.stop()
        await self.sources.stop()  # unacknowledged messages go back to their brokers
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
        await self.coordinator.stop()  # the lease goes at once to a follower; our rest is claimable
        self.attempts.close()
        await self.store.close()
        self._ready = False
        log.info("stopped")
        if unsaved or later:
            raise StopIncomplete(unsaved or later or "")

    def hurry(self) -> None:
        """A second stop signal: the runs still running are stopped now, not after `shutdown_grace`
        (each as at the grace's end: stopped or left to its target, and taken up at the next start)."""
        self.attempts.hurry()

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
        for entry in states:  # a sink's worker runs while its deliveries fail: shown failing
            if (failing := self.hub.failing.get(entry["task"])) is not None:
                entry.update(state="failing", failing_since=failing[0], last_error=failing[1])
        for target in self.targets.values():  # its own watches and cleanup loops, retrying on their own
            for name, error in target.health().items():
                state = "failing" if error else "running"
                states.append(
                    {"task": name, "critical": False, "state": state, "restarts": 0, "last_error": error}
                    | {"consecutive_failures": 0, "failing_since": None, "retry_in": None}
                )
        return {
            "ready": not problems,
            "problems": problems,
            "tasks": states,
            "store": store,
            "sources": self.sources.health(),
            "launch_backlog": self.attempts.backlog.summary(),
            "replica": self.coordinator.health(),
        }

    # ------------------------------------------------------------------ wiring
    async def _lead(self) -> None:
        """This replica took the leader lease: record what was missed (per each job's catch-up
        policy, up to now), then run the clock from now on. Fires are fenced by the lease token."""
        now = utcnow()
        await catch_up(self.store, self.jobs, self.intake.submit_many, now)
        self._schedule_all(now)  # the heap from now, not from before
        self.scheduler.start(self.supervisor.spawn)

    def _schedule_all(self, now: datetime) -> None:
        for stored in self.jobs.values():
            self.scheduler.set_job(stored.job, stored.paused, now)

    async def _adopt(self, runs: list[Run]) -> None:
        """Runs of a dead replica, claimed for this one: resumed or recorded lost, per target (a job
        defined over the dead one's API is read from the store first)."""
        for name in {r.job for r in runs} - self.jobs.keys():
            if (found := await self.store.get_job(name)) is not None:
                self.jobs[name] = found
                self.scheduler.set_job(found.job, found.paused)
        await reconcile(runs, self.run_states, taken_over=True)

    def _prepare(self, names: list[str], due: float) -> None:
        self.supervisor.once(warm(self.jobs, self.targets, names, due), "jobwire-prepare")

    def _fire_batch(self, batch: list[Incoming]) -> None:
        """The scheduler's hand-in of due fires: recorded in a one-shot task, the clock goes on."""
        self.supervisor.once(self.pending_fires.hand_in(batch), "jobwire-fire")

    async def _run_exists(self, run_id: str) -> bool:
        return run_id in self.runs or await self.store.get_run(run_id) is not None

    async def _reload_loop(self) -> None:
        """Re-read job files when they change (mtimes, S3 ETags; once a second). Runs
        supervised: a reload that raises is logged, shown in /readyz and the loop restarted."""
        try:
            while True:
                await asyncio.sleep(1)
                if await self.job_registry.changed():  # files by mtime, files in S3 by ETag
                    await self.reload_files()
        finally:
            await self.job_registry.close()

    async def refresh_metrics(self) -> None:
        """Before /metrics is scraped: values read from elsewhere (the fleet's queue depths)."""
        await self.attempts.refresh_metrics()

    def callback_token(self, run_id: str) -> str:
        return self.tokens.token(run_id)

    # ------------------------------------------------------------------ jobs
    def _template_lookup(self) -> TemplateLookup | None:
        target = self.targets.get("kubernetes")
        return target if target is not None and hasattr(target, "template_exists") else None

    def _outbox_committed(self, sinks: set[str]) -> None:
        for name in sinks:
            relay = self.relays.get(name)
            if relay is not None:
                relay.wake()

    def _definitions_changed(self) -> None:
        self.intake.chains.rebuild(self.jobs)
        self.sources.changed()

    async def reload_files(self) -> list[str]:
        """Re-read job files; on errors keep the current definitions and return the messages."""
        errors = await self.job_registry.reload_files()
        self._definitions_changed()
        return errors

    def _job_changed(self, name: str, before: Job | None, after: Job | None) -> None:
        """One job defined anew or deleted over the API: its own chain edges, and the sources
        only when it has (or had) a trigger they serve — not a pass over every job per request."""
        self.intake.chains.replace(name, after)
        if self.sources.binds(before) or self.sources.binds(after):
            self.sources.changed()

    async def put_job(self, job: Job, origin: str = "api") -> StoredJob:
        before = self.jobs.get(job.name)
        stored = await self.job_registry.put_job(job, origin)
        self._job_changed(job.name, before.job if before else None, stored.job)
        return stored

    def get_job(self, name: str) -> StoredJob:
        return self.job_registry.get_job(name)

    async def delete_job(self, name: str) -> None:
        before = self.jobs.get(name)
        await self.job_registry.delete_job(name)
        self._job_changed(name, before.job if before else None, None)

    async def pause(self, name: str) -> StoredJob:
        return await self.job_registry.set_paused(name, True)

    async def resume(self, name: str) -> StoredJob:
        return await self.job_registry.set_paused(name, False)

    # ------------------------------------------------------------------ intake
    # `submit`, `submit_many`, `trigger` and `webhook` hand back the part's own coroutine rather
    # than awaiting it: the facade adds no frame (and no await) to the path submit → commit → launch.
    def submit(self, incoming: Incoming) -> Coroutine[Any, Any, Admission]:
        """Record the event (and its run) durably, then dispatch. Returns after the commit."""
        return self.intake.submit(incoming)

    def submit_many(self, incomings: list[Incoming]) -> Coroutine[Any, Any, list[Admission | BaseException]]:
        """`submit` for a batch: one result per event, its admission or the error that kept it out."""
        return self.intake.submit_many(incomings)

    def trigger(
        self,
        job: str,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        source: str = "api",
        yield_to_launch: bool = True,
    ) -> Coroutine[Any, Any, Admission]:
        """Manual run (API / CLI). Raises JobNotFound, InvalidParams (422 naming the parameter).
        `yield_to_launch`: see `EventIntake.submit`."""
        return self.intake.trigger(job, params, idempotency_key, source, yield_to_launch)

    def rerun(self, run_id: str, idempotency_key: str | None = None) -> Coroutine[Any, Any, Admission]:
        return self.intake.rerun(run_id, idempotency_key)

    def webhook_precheck(self, job: str, trigger_id: str | None, headers: dict[str, str]) -> Delivery:
        """What can be refused before the body is read: an unknown job or trigger, an unset
        secret, a missing or malformed signature header or delivery id."""
        return self.webhooks.precheck(job, trigger_id, headers)

    def webhook(
        self,
        job: str,
        trigger_id: str | None,
        body: bytes,
        headers: dict[str, str],
        checked: Delivery | None = None,
    ) -> Coroutine[Any, Any, Admission]:
        """Verify the HMAC signature over delivery id, timestamp and body, then submit. The run
        key comes from the (signed) delivery id: a replayed delivery is a recorded duplicate (409)."""
        return self.webhooks.receive(job, trigger_id, body, headers, checked)

    # ------------------------------------------------------------------ runs
    async def get_run(self, run_id: str) -> Run:
        return await self.run_states.get_run(run_id)

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> Run:
        return await self.run_states.cancel(run_id, reason)

    async def callback(
        self, run_id: str, token: str, ok: bool, message: str | None, data: dict[str, Any]
    ) -> Run:
        return await self.run_states.callback(run_id, token, ok, message, data)

    def run_log(self, run_id: str, follow: bool = False) -> AsyncIterator[bytes]:
        return self.run_states.run_log(run_id, follow)

    def subscribe(self, after: int | None = None) -> Subscription:
        """Every status document from now on (or after sequence number `after`, as far as the
        hub still keeps them); subscribed when this returns."""
        return self.hub.subscribe(after)

    # ------------------------------------------------------------------ retention
    async def sweep(self, only_touched: bool = False) -> int:
        """Apply each job's retention now (see `Retention.sweep`); the number of runs deleted."""
        return await self.retention.sweep(only_touched)


__all__ = [
    "Conflict", "Engine", "EngineError", "Forbidden", "InvalidParams", "JobNotFound", "RunNotFound",
    "Unavailable",
]  # fmt: skip
