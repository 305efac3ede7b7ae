"""A runner of the fleet (`jobwire serve --role runner`; docs/fleet.md): takes attempts from the
RabbitMQ work queue, runs each on its target (the same plugs and the same strict timeout as in
process, `execute.execute_attempt`), and reports back on the results queue. No store: with SQLite
the scheduler alone holds the database.

Per work message: `started` (and any intermediate status) is published as it happens; the outcome
is published and, once RabbitMQ confirmed it, the work message is acknowledged. A runner that dies
before that leaves the message unacknowledged: RabbitMQ gives it to another runner, which runs the
attempt again under the same run id — the target-side name (HTTP `Idempotency-Key`, Kubernetes Job
name) makes the repeat adopt the work, and the scheduler records one end whatever arrives twice.
The prefetch is the runner's slot count: a runner never holds more messages than it runs.

Cancels come on the cancels stream (`<work queue>.cancels`, read by every runner from a day back):
an attempt this runner is executing is stopped (its target's cancel, then its task: the HTTP call's
connection is closed), reported `cancelled` and its work message acknowledged; a work message for a
cancelled attempt that arrives later is acknowledged without running it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from jobwire.config import Settings
from jobwire.engine.execute import execute_attempt, no_target
from jobwire.engine.fleet_wire import broker_url, link_for
from jobwire.engine.supervisor import Supervisor, settle
from jobwire.model import Job, Run, RunError, RunState, StatusBlock, utcnow
from jobwire.targets import build_targets
from jobwire.targets.base import CallbackResult, Outcome, RunContext, Target

log = structlog.get_logger(__name__)

LOG_CAP = 64 * 1024
"""The most of an attempt's log a runner sends back with its outcome."""
CANCEL_MEMORY = timedelta(days=1)
"""How far back a starting runner reads the cancels stream (its `x-max-age`)."""
CANCELS_KEPT = 100_000
"""Cancelled attempt names a runner remembers (the oldest are forgotten first)."""


class RunnerContext(RunContext):
    def __init__(self, runner: Runner, work: dict[str, Any], job: Job, redelivered: bool) -> None:
        self._runner = runner
        self.run = Run.model_validate(work["run"])
        self.job = job
        self.params = dict(self.run.params)
        self.resumed = bool(work.get("resumed")) or redelivered
        self.name = str(work["name"])
        """The work message's name: the attempt's, or a copy's (`<attempt>#<tag>`, published again
        by a scheduler that could not know whether the first was in the queue): results carry it."""
        self.callback_url = work.get("callback_url")
        self.callback_token = str(work.get("callback_token") or "")
        self._log = bytearray()
        self._started = False

    def result(self, kind: str, **fields: Any) -> bytes:
        doc = {"v": 1, "kind": kind, "run_id": self.run.id, "attempt": self.run.attempt, "name": self.name}
        doc["runner"] = self._runner.runner_id
        doc.update(fields)
        return json.dumps(doc, separators=(",", ":"), default=str).encode()

    async def started(self, ref: str | None, status: StatusBlock | None = None) -> None:
        if self._started:
            return
        self._started = True
        run = self.run
        run.started_at = run.started_at if self.resumed and run.started_at else utcnow()
        run.target_ref = ref
        body = self.result(
            "started",
            ref=ref,
            started_at=run.started_at.isoformat(),
            status=status.model_dump(mode="json") if status else None,
        )
        self._runner.send(f"{self.target_name}:started", body)

    async def report(self, status: StatusBlock, target_status: dict[str, Any] | None = None) -> None:
        body = self.result("report", status=status.model_dump(mode="json"), target_status=target_status)
        self._runner.send(f"{self.target_name}:report", body)

    def log(self, data: bytes) -> None:
        room = LOG_CAP - len(self._log)
        if room > 0:
            self._log += data[:room]

    async def callback(self) -> CallbackResult:
        return CallbackResult(ok=False, message="a job's callback cannot be awaited on a runner of the fleet")

    def outcome(self, o: Outcome) -> bytes:
        return self.result(
            "outcome",
            started_at=self.run.started_at.isoformat() if self.run.started_at else None,
            status=o.status.model_dump(mode="json") if o.status else None,
            log=base64.b64encode(bytes(self._log)).decode() if self._log else None,
            outcome={
                "state": o.state.value,
                "exit_code": o.exit_code,
                "http_status": o.http_status,
                "error": o.error.model_dump(mode="json") if o.error else None,
                "retryable": o.retryable,
                "target_status": o.target_status,
            },
        )


class Runner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots = settings.runner_slots
        self.runner_id = f"{socket.gethostname()}-{os.getpid()}"
        self.registry = CollectorRegistry()
        self.supervisor = Supervisor()
        self.targets: dict[str, Target] = build_targets(settings)
        self.link: Any = None
        self._jobs: dict[str, Job] = {}
        """Job definitions as sent, by their JSON text: validated once, not once per run."""
        self._inflight: dict[str, list[Any]] = {}
        """Attempt name → its deliveries (a second copy of a message waits for the first's end)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, tuple[asyncio.Task[Any], RunnerContext, Target | None]] = {}
        """Attempt name → what executes it now (to stop it on a cancel)."""
        self._cancelled: OrderedDict[str, str] = OrderedDict()
        """Attempt names cancelled by the scheduler → the reason (from the cancels stream)."""
        self._since = utcnow() - CANCEL_MEMORY
        self._caught_up = asyncio.Event()
        """Set once the cancels stream was read up to this runner's start: work is taken only then."""
        self._marker = f"{self.runner_id}-{os.urandom(6).hex()}"
        self._sending: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()
        """Set by a second stop signal: the shutdown grace ends now."""
        self._unsubscribed = asyncio.Event()
        """Set once the work consumer is cancelled (after a stop): no delivery comes any more."""
        self._ready = False
        r = self.registry
        Gauge("jobwire_runner_slots", "Runs this runner executes at once (its prefetch)", registry=r).set(
            self.slots
        )
        self.m_busy = Gauge("jobwire_runner_busy", "Runs this runner is executing", registry=r)
        self.m_runs = Counter(
            "jobwire_runner_runs_total", "Attempts this runner ran to an end", ["target", "state"], registry=r
        )
        self.m_redelivered = Counter(
            "jobwire_runner_redelivered_total",
            "Work messages taken over from a runner that went away without acknowledging them",
            registry=r,
        )
        self.m_cancels = Counter(
            "jobwire_runner_cancels_total",
            "Cancels applied: an attempt stopped while it ran, or a cancelled one's work skipped",
            ["how"],
            registry=r,
        )
        self.m_up = Gauge("jobwire_runner_connected", "1 while connected to RabbitMQ", registry=r)

    # ------------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        connected = self.link is not None and self.link.connected
        return self._ready and self._caught_up.is_set() and not self._stop.is_set() and connected

    async def start(self) -> None:
        for target in self.targets.values():
            target.bind(registry=self.registry)
            await target.start()
        self.link = link_for(broker_url(), self.settings.work_queue, self.settings.results_queue)
        await self.link.open()  # fail at start, with the reason, when the broker is unreachable
        self.supervisor.loop("jobwire-runner-work", self._consume, critical=True)
        self.supervisor.loop("jobwire-runner-cancels", self._follow_cancels, critical=True)
        self._ready = True
        log.info("runner started", runner=self.runner_id, slots=self.slots, queue=self.settings.work_queue)

    async def stop(self) -> None:
        """Take no more work; let the attempts in progress end within `shutdown_grace` and report
        them; what is still running then goes back to the queue (another runner adopts it)."""
        self._stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace.total_seconds()
        if self._tasks:
            log.info("runner stopping: waiting for running attempts", count=len(self._tasks))
        # first the consumer's basic.cancel (deliveries still on their way start attempts too),
        # then every attempt — not only those running when the stop came — within the grace
        if self._caught_up.is_set() and self.link is not None and self.link.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unsubscribed.wait(), max(0.0, deadline - loop.time()))
        await self._settle(deadline)
        await self.supervisor.cancel_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.link is not None:
            await self.link.close()
        for target in self.targets.values():
            try:
                await target.close()
            except Exception as exc:
                log.warning("target did not close cleanly", target=target.kind, error=str(exc))
        self._ready = False

    def health(self) -> dict[str, Any]:
        tasks = self.supervisor.health()
        problems = [f"task {t.name} is failing: {t.last_error}" for t in tasks if t.state == "failing"]
        if not self.ready:
            if self._stop.is_set():
                problems.insert(0, "stopping")
            elif self.link is None or not self.link.connected:
                problems.insert(0, "not connected to RabbitMQ")
            else:
                problems.insert(0, "reading the cancels stream up to its start")
        self.m_up.set(1 if self.link is not None and self.link.connected else 0)
        return {
            "ready": not problems,
            "problems": problems,
            "tasks": [t.as_dict() for t in tasks],
            "runner": {"id": self.runner_id, "slots": self.slots, "busy": len(self._tasks)},
        }

    # ------------------------------------------------------------------ work in
    async def _consume(self) -> None:
        await self._caught_up.wait()
        await self.link.consume(
            self.settings.work_queue, self.slots, self._on_work, stop=self._stop, drain=self._drain
        )

    async def _drain(self) -> None:
        """Called by the consumer once RabbitMQ confirmed it sends no more (basic.cancel)."""
        self._unsubscribed.set()
        loop = asyncio.get_running_loop()
        await self._settle(loop.time() + self.settings.shutdown_grace.total_seconds())

    def hurry(self) -> None:
        """A second stop signal: the attempts still running go back to the queue now, not after
        `shutdown_grace`."""
        if not self._hurry.is_set():
            self._hurry.set()
            left = len(self._tasks)
            log.warning("not waiting for running attempts any more: handing them back", count=left)

    async def _settle(self, deadline: float) -> None:
        """Wait until no attempt runs here, `deadline` (the loop's clock), or `hurry`."""
        await settle(lambda: self._tasks, deadline, self._hurry)

    # ------------------------------------------------------------------ cancels in
    async def _follow_cancels(self) -> None:
        """Read the cancels stream from a day before this runner started (again after a reconnect:
        remembering a cancel twice changes nothing). The runner's own marker, appended first,
        tells when it has read everything sent before it started: only then does it take work."""
        if not self._caught_up.is_set():
            marker = json.dumps({"v": 1, "marker": self._marker}).encode()
            await self.link.publish(self.link.cancels, [(f"{self._marker}:marker", marker)])
        await self.link.consume(
            self.link.cancels, 256, self._on_cancel, arguments={"x-stream-offset": self._since}
        )

    async def _on_cancel(self, delivery: Any) -> None:
        try:
            msg = json.loads(delivery.body)
            if "marker" in msg:
                await delivery.ack()
                if msg["marker"] == self._marker:
                    self._caught_up.set()
                return
            name, reason = str(msg["name"]), str(msg.get("reason") or "cancelled")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("runner: malformed cancel dropped", error=str(exc))
            await delivery.ack()
            return
        await delivery.ack()  # a stream keeps it: the ack is only the consumer's credit
        self._cancelled[name] = reason
        self._cancelled.move_to_end(name)
        while len(self._cancelled) > CANCELS_KEPT:
            self._cancelled.popitem(last=False)
        running = self._running.get(name)
        if running is None:
            return
        task, ctx, target = running
        log.info("runner: cancelling an attempt", attempt=name, reason=reason)
        if target is not None:
            try:
                await target.cancel(ctx)
            except Exception as exc:
                log.warning("target cancel failed", attempt=name, error=str(exc))
        task.cancel()

    def _on_work(self, delivery: Any) -> None:
        task = asyncio.create_task(self._run(delivery))
        self._tasks.add(task)
        self.m_busy.set(len(self._tasks))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.m_busy.set(len(self._tasks))
        if not task.cancelled() and task.exception() is not None:
            log.error("runner: attempt handling failed", error=str(task.exception()))

    def _job(self, raw: dict[str, Any]) -> Job:
        text = json.dumps(raw, sort_keys=True)
        job = self._jobs.get(text)
        if job is None:
            if len(self._jobs) > 10_000:
                self._jobs.clear()
            job = self._jobs[text] = Job.model_validate(raw)
        return job

    async def _run(self, delivery: Any) -> None:
        try:
            work = json.loads(delivery.body)
            name = str(work["name"])
        except (ValueError, KeyError, TypeError) as exc:  # not from a scheduler: nothing to run
            log.error("runner: malformed work message dropped", error=str(exc))
            await delivery.ack()
            return
        if work.get("kind") == "probe":  # a restarted scheduler's marker (engine/fleet_copies.py)
            answer = {"v": 1, "kind": "probe", "name": name, "replica": work.get("replica"),
                      "runner": self.runner_id}
            await self.send_confirmed(f"{name}:probe", json.dumps(answer).encode())
            await delivery.ack()
            return
        if delivery.redelivered:
            self.m_redelivered.inc()
        if name in self._cancelled:  # cancelled while it waited in the queue: not run at all
            self.m_cancels.labels("skipped").inc()
            log.info("runner: cancelled attempt not run", attempt=name)
            await delivery.ack()
            return
        attempt = name.partition("#")[0]  # a copy's name is its attempt's with "#<tag>"
        copies = self._inflight.get(attempt)
        if copies is not None:  # the same attempt twice on this runner: one run, both acked after it
            copies.append(delivery)
            return
        self._inflight[attempt] = [delivery]
        try:
            job = self._job(work["job"])
            ctx = RunnerContext(self, work, job, delivery.redelivered)
            target = self.targets.get(job.target.type)
            this = asyncio.current_task()
            assert this is not None
            self._running[name] = (this, ctx, target)
            try:
                outcome = no_target(job) if target is None else await execute_attempt(target, ctx)
            except asyncio.CancelledError:
                reason = self._cancelled.get(name)
                if reason is None or self._stop.is_set():
                    raise  # a shutdown: handed back (not acknowledged)
                this.uncancel()
                self.m_cancels.labels("stopped").inc()
                outcome = Outcome(
                    RunState.cancelled, error=RunError(message=reason, reason="Cancelled"), retryable=False
                )
            finally:
                self._running.pop(name, None)
            self.m_runs.labels(job.target.type, outcome.state.value).inc()
            await self.send_confirmed(f"{name}:outcome", ctx.outcome(outcome))
        except BaseException:
            self._inflight.pop(attempt, None)  # not acknowledged: RabbitMQ redelivers it
            raise
        for d in self._inflight.pop(attempt, []):
            await d.ack()

    # ------------------------------------------------------------------ results out
    def send(self, message_id: str, body: bytes) -> None:
        """Publish a result now, not waiting for its confirm (a state change: the outcome, which
        is waited for, carries what matters of it — its start time — again)."""
        task = asyncio.create_task(self._publish_quietly(message_id, body))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish_quietly(self, message_id: str, body: bytes) -> None:
        try:
            await self.link.publish(self.settings.results_queue, [(message_id, body)])
        except ConnectionError as exc:
            log.warning("runner: a state change was not published", message_id=message_id, error=str(exc))

    async def send_confirmed(self, message_id: str, body: bytes) -> None:
        """Publish a result; returns once RabbitMQ confirmed it (raises ConnectionError if not)."""
        await self.link.publish(self.settings.results_queue, [(message_id, body)])


__all__ = ["Runner", "RunnerContext"]
