"""Attempts: running one run on its target — timeout, retry with backoff, cancel, shutdown.

Before an attempt is handed to its target, its target-side name goes into the launch journal
(`launches.py`), so that after a crash jobwire knows whether a pending run may have started —
unless the target relaunches the same way either way (`Target.launch_marker`: not for `http`).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from jobwire import loops
from jobwire.config import Settings
from jobwire.engine.backlog import LaunchBacklog, Waiting
from jobwire.engine.committer import Committer
from jobwire.engine.due import DueGroups, Member, until
from jobwire.engine.execute import execute_attempt, no_target
from jobwire.engine.launches import LaunchJournal
from jobwire.engine.metrics import Metrics
from jobwire.engine.policies import backoff_delay
from jobwire.engine.runlogs import RunLogs
from jobwire.engine.scheduler import next_fire
from jobwire.engine.secret import CallbackTokens
from jobwire.engine.spill import ReadBack
from jobwire.engine.supervisor import Supervisor, settle
from jobwire.model import Job, Run, RunError, RunState, StatusBlock, utcnow
from jobwire.store import StoredJob
from jobwire.targets.base import Armed, CallbackResult, Outcome, RunContext, Target

log = structlog.get_logger(__name__)


async def _alive() -> None:
    return None


GivenUp = tuple[Run, Job, str]
"""A run due now that will not start, and why (`not_due`)."""
Ready = tuple[Run, Job, "EngineContext", Armed]
"""A run due now whose armed attempt fires (`Target.arm`)."""

FIRED_CHUNK = 16
"""Tasks of fired attempts started per turn of the loop (`Attempts._run_fired`)."""
ARM_CHUNK = 64
"""Arming tasks started per turn of the loop (`Attempts._arm_some`)."""


def not_due(run: Run, job: Job, stored: StoredJob | None) -> str | None:
    """Why a run recorded ahead of its due time (`run.not_before`) must not start then, or None.
    Its job's definition is compared by identity first: unchanged, it is due (no cron to evaluate
    for each of 1,000 runs due at one second)."""
    if stored is None:
        return "its job was deleted before the run's due time"
    if stored.paused:
        return "its job was paused before the run's due time"
    if stored.job is job:
        return None
    due = run.not_before
    trig = stored.job.trigger(run.trigger)
    if due is None or trig is None or next_fire(trig, due - timedelta(microseconds=1)) != due:
        when = due.isoformat() if due else "?"
        return f"its job was redefined: trigger {run.trigger!r} no longer fires at {when}"
    return None


class RunHost(Protocol):
    """What attempts need from the run state machine (`runs.RunStates`, which owns them): a
    protocol, not an import, so neither module imports the other."""

    def transition(self, run: Run, state: RunState, reason: str | None = None, block: Any = None) -> None:
        """Change a run's state: persisted and published."""

    def publish(self, run: Run, block: Any = None) -> None:
        """Publish a run's status document without a state change."""

    def finished(self, run: Run) -> None:
        """Bookkeeping once a run is terminal: free its slot, start whoever waits for it."""

    def forget(self, run: Run) -> None:
        """Drop a pending run from memory: it waits in the store only (the launch backlog is full)."""

    def adopt(self, run: Run) -> Waiting | None:
        """Take a run read back from the store into memory: what it waits as, or None if it is in
        memory already (or was never out) or ended (its job is gone)."""

    async def pending_runs(
        self, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Run], tuple[datetime, str] | None]:
        """This replica's pending runs in the store (`Store.pending_runs`)."""


class EngineContext(RunContext):
    def __init__(
        self, attempts: Attempts, run: Run, job: Job, resumed: bool, received_at: datetime | None
    ) -> None:
        self._attempts = attempts
        self.run = run
        self.job = job
        self.params = dict(run.params)
        self.resumed = resumed
        self._callback_url: str | None = None
        self._callback_token: str | None = None
        self._received_at = received_at
        self._cap: int | None = job.target.__dict__.get("log_max_bytes")
        """The target's own log cap, where it has one (a field: read from the instance's dict —
        `getattr` with a default went through pydantic's `__getattr__` and an exception per run
        for targets without it, ~5 % of a 10,000-run burst)."""
        self._told: StatusBlock | None = None
        """The status block last published for this attempt: a report repeating it says nothing."""
        self.fired_at: float | None = None
        """When an armed attempt was fired (`Target.arm`): its start, whenever `started` is told."""

    # Made when a target asks (a local process's env, a callback wait): an HMAC per attempt was
    # ~2.5 % of the event loop per HTTP run, which never reads them.
    @property
    def callback_url(self) -> str | None:
        if self._callback_url is None:
            base = self._attempts.settings.effective_public_url
            self._callback_url = f"{base}/api/v1/runs/{self.run.id}/callback"
        return self._callback_url

    @callback_url.setter
    def callback_url(self, value: str | None) -> None:
        self._callback_url = value

    @property
    def callback_token(self) -> str:
        if self._callback_token is None:
            self._callback_token = self._attempts.tokens.token(self.run.id)
        return self._callback_token

    @callback_token.setter
    def callback_token(self, value: str) -> None:
        self._callback_token = value

    async def until_startable(self) -> float | None:
        attempts = self._attempts
        if not attempts.may_launch():  # `_until_alive`, without its coroutine when alive
            await attempts._until_alive(self.run)
        return attempts.start_deadline()

    async def started(self, ref: str | None, status: StatusBlock | None = None) -> None:
        run = self.run
        now = utcnow() if self.fired_at is None else datetime.fromtimestamp(self.fired_at, UTC)
        if run.state == RunState.running and run.target_ref == ref:
            return
        run.started_at = run.started_at if self.resumed and run.started_at else now
        run.target_ref = ref
        if self._received_at is not None:
            self._attempts.metrics.dispatch_seconds.observe((now - self._received_at).total_seconds())
            self._received_at = None
        self._attempts.host.transition(
            run,
            RunState.running,
            f"started on {self.job.target.type}" + (f" as {ref}" if ref else ""),
            status,
        )
        self._told = status

    async def report(self, status: StatusBlock, target_status: dict[str, Any] | None = None) -> None:
        if target_status is None and status == self._told:
            return  # the same status again (a watch event that changes nothing here): no document
        if target_status is not None:
            self.run.target_status = target_status
        self._told = status
        self._attempts.committer.update(self.run)
        self._attempts.host.publish(self.run, status)

    def log(self, data: bytes) -> None:
        self._attempts.logs.write(self.run.id, data, self._cap)

    async def callback(self) -> CallbackResult:
        return await self._attempts.wait_callback(self.run.id)


class Attempts:
    """The in-process launcher: each attempt runs on its target as a task of this process."""

    arms = True
    """Whether attempts recorded ahead are armed on their targets here (`Target.arm`)."""

    def __init__(
        self,
        host: RunHost,
        settings: Settings,
        jobs: Mapping[str, StoredJob],
        targets: Mapping[str, Target],
        committer: Committer,
        logs: RunLogs,
        metrics: Metrics,
        tokens: CallbackTokens,
    ) -> None:
        self.host = host
        self.settings = settings
        self.jobs = jobs
        self.targets = targets
        self.committer = committer
        self.logs = logs
        self.metrics = metrics
        self.tokens = tokens
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._arming: set[asyncio.Task[None]] = set()
        self._to_arm: deque[tuple[Target, EngineContext]] = deque()
        self._primed: dict[str, tuple[EngineContext, Armed]] = {}
        """Attempts armed by their target, waiting for their due time (`Target.arm`)."""
        self._hurry = asyncio.Event()
        """Set by a second stop signal: the shutdown grace ends now."""
        self._fired: dict[str, Armed] = {}
        """Attempts fired whose task has not begun (a cancel then disarms them)."""
        self.due = DueGroups(self._start_due)
        """Time fires recorded ahead, waiting for their due time (`due.py`)."""
        self._contexts: dict[str, EngineContext] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._callbacks: dict[str, asyncio.Future[CallbackResult]] = {}
        self._failed_by_callback: dict[str, CallbackResult] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._shutting_down = False
        self.journal = LaunchJournal(settings.data_dir / "launches.journal")
        self.backlog = LaunchBacklog(
            metrics, targets, settings.max_running_attempts, settings.backlog_memory
        )
        self.backlog.drop_run = host.forget
        self.read_back = ReadBack(
            self.backlog,
            host.pending_runs,
            committer.flush,
            host.adopt,
            lambda item: self._run_task(*item),
        )
        """Runs the backlog keeps in the store, read back as memory frees (`spill.py`)."""
        self._placed: set[str] = set()
        """Runs whose attempt holds a place of its target's launch limit (until its target returns)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop `open` ran in: each attempt's task is made there (`loops.current`)."""
        self.may_launch: Callable[[], bool] = lambda: True
        """False while this replica's heartbeat may have expired (engine/replicas.py): it then
        launches nothing — its runs may be someone else's by now — until `wait_alive` returns."""
        self.wait_alive: Callable[[], Awaitable[None]] = _alive
        self.start_deadline: Callable[[], float | None] = lambda: None
        """The monotonic time a launch must come before (None: no bound; engine/replicas.py)."""

    @property
    def count(self) -> int:
        return len(self._tasks)

    # ---- lifecycle (the launch seam: see `launcher.Launcher`)
    async def open(self, supervisor: Supervisor) -> None:
        """Before reconcile, holding the store's lock (the journal is rewritten)."""
        self._loop = asyncio.get_running_loop()
        self.journal.open()

    def recovered(self) -> None:
        """Reconcile and catch-up are done."""

    async def refresh_metrics(self) -> None:
        """Before a scrape of /metrics."""

    def close(self) -> None:
        self.journal.close()

    # ---- the launch journal
    @staticmethod
    def _name(run_id: str, attempt: int) -> str:
        return run_id if attempt == 1 else f"{run_id}-{attempt}"

    def was_launched(self, run: Run) -> bool:
        return self._name(run.id, run.attempt) in self.journal

    def _marked(self, run_id: str, attempts: int) -> bool:
        """Whether any attempt of the run is in the journal (not for targets without markers,
        unless a journal from before a restart holds one)."""
        live = self.journal.live
        if attempts == 1:  # a first attempt's name is its run id (`_name`): once a run, no generator
            return run_id in live
        return any(self._name(run_id, n) in live for n in range(1, attempts + 1))

    def forget(self, run_id: str, attempts: int = 1) -> None:
        """The run's end is committed: drop every attempt of it from the journal."""
        self.journal.forget(self._name(run_id, n) for n in range(1, attempts + 1))

    # ---- launching
    def launch(self, run: Run, job: Job, resumed: bool = False, received_at: datetime | None = None) -> None:
        """Start an attempt now, or at `run.not_before`: a time fire's due time (it was recorded
        ahead: it waits with the others due then, `due.py`) or a retry's."""
        delay = (run.not_before - utcnow()).total_seconds() if run.not_before else 0.0
        if delay > 0 and not resumed:
            if run.not_before is not None and run.not_before == run.scheduled_at and run.attempt == 1:
                self.due.add(run, job, run.not_before.timestamp())
                self._arm(run, job)
                return
            loop = asyncio.get_running_loop()
            self._timers[run.id] = loop.call_later(delay, self._start_task, run, job, False, None)
            return
        self._start_task(run, job, resumed, received_at)

    def _arm(self, run: Run, job: Job) -> None:
        """Let the run's target make its attempt ready before its due time (`Target.arm`)."""
        target = self.targets.get(job.target.type)
        if not self.arms or target is None or type(target).arm is Target.arm:
            return
        if not self._to_arm:
            asyncio.get_running_loop().call_soon(self._arm_some)
        self._to_arm.append((target, EngineContext(self, run, job, False, run.not_before)))

    def _arm_some(self) -> None:
        """`ARM_CHUNK` arming tasks per turn of the loop: 1,000 recorded at once, armed in one turn,
        held the API's requests for ~40 ms."""
        for _ in range(min(ARM_CHUNK, len(self._to_arm))):
            target, ctx = self._to_arm.popleft()
            task = asyncio.create_task(self._arm_one(target, ctx), name=f"jobwire-arm-{ctx.run.id}")
            self._arming.add(task)
            task.add_done_callback(self._arming.discard)
        if self._to_arm:
            asyncio.get_running_loop().call_soon(self._arm_some)

    async def _arm_one(self, target: Target, ctx: EngineContext) -> None:
        try:
            armed = await target.arm(ctx)
        except Exception as exc:  # a target's bug: the run starts the usual way at its due time
            log.warning("arming an attempt failed", run_id=ctx.run.id, error=str(exc))
            return
        if armed is None:
            return
        if ctx.run.id not in self.due:  # its due time came (or it was cancelled) meanwhile
            armed.disarm()
            return
        self._primed[ctx.run.id] = (ctx, armed)

    def _disarm(self, run_id: str) -> None:
        primed = self._primed.pop(run_id, None)
        if primed is not None:
            primed[1].disarm()

    def _start_due(self, due: float, members: list[Member]) -> None:
        """Runs recorded ahead whose due time has come (or, for a big group, is under its lead
        away: `due.py`): each starts on its job's definition as it is then — or ends `cancelled` if
        its job was deleted or paused meanwhile, or redefined so that its trigger no longer fires at
        that time. Which is which is decided first; then, at the due time, armed attempts
        (`Target.arm`) are fired one after the other, and only then is anything else done."""
        stamps: list[float] = []
        stamp, clock = stamps.append, time.time
        collecting = gc.isenabled()
        if collecting:  # a collection due now would stall the writes: young passes of 4–18 ms seen
            gc.disable()
        try:
            given_up, plain, ready = self._sort_due(members)
            shots = [shot.prime() for _, _, _, shot in ready]  # the loop is held from here to the last
            until(due)
            late = clock() - due
            for fire in shots:
                fire()
                stamp(clock())
        finally:
            if collecting:
                gc.enable()
        fired = self._fired
        for (run, _, ctx, shot), at in zip(ready, stamps, strict=True):
            ctx.fired_at = at
            fired[run.id] = shot
        for run, job, why in given_up:
            error = RunError(message=why, reason="NotDue")
            self._finish(run, job, Outcome(RunState.cancelled, error=error, retryable=False))
        for run, job in plain:
            self._start_task(run, job, False, run.not_before)
        observe = self.metrics.lateness_seconds.observe
        for _ in members:
            observe(late)
        self._run_fired([(run, job, ctx) for run, job, ctx, _ in ready])

    def _sort_due(self, members: list[Member]) -> tuple[list[GivenUp], list[Member], list[Ready]]:
        """Runs due now: (given up and why, to start the usual way, armed and admitted to fire)."""
        given_up: list[GivenUp] = []
        plain: list[Member] = []
        ready: list[Ready] = []
        alive = self.may_launch()
        jobs, primed_of, admit = self.jobs, self._primed, self.backlog.admit
        for run, job in members:
            stored = jobs.get(run.job)
            why = not_due(run, job, stored)
            primed = primed_of.pop(run.id, None)
            if why is not None:
                if primed is not None:
                    primed[1].disarm()
                given_up.append((run, job, why))
                continue
            assert stored is not None  # `not_due` gives a reason when the job is gone
            if primed is not None and (stored.job is not job or not alive):
                primed[1].disarm()  # armed for the definition it had when recorded
                primed = None
            if primed is None:
                plain.append((run, stored.job))
            elif self._shutting_down or not admit(job.target.type, (run, job, False, run.not_before)):
                primed[1].disarm()  # it waits in the launch backlog and starts the usual way
            else:
                ready.append((run, job, primed[0], primed[1]))
        return given_up, plain, ready

    def _run_fired(self, fired: list[tuple[Run, Job, EngineContext]]) -> None:
        """The tasks of fired attempts (each reads its answer), `FIRED_CHUNK` per turn of the loop:
        1,000 tasks taking their first step in one turn held the API's requests for ~100 ms, and a
        task whose answer has come runs its whole attempt in that step (~0.2 ms)."""
        for run, job, ctx in fired[:FIRED_CHUNK]:
            if run.state.terminal or self._shutting_down:  # cancelled in between: its answer is not read
                shot = self._fired.pop(run.id, None)
                if shot is not None:
                    shot.disarm()
                self._placed.add(run.id)
                self._release(run.id, job.target.type)  # the place `backlog.admit` gave it
                continue
            self._run_task(run, job, False, run.not_before, ctx)
        if len(fired) > FIRED_CHUNK:
            asyncio.get_running_loop().call_soon(self._run_fired, fired[FIRED_CHUNK:])

    def _start_task(self, run: Run, job: Job, resumed: bool, received_at: datetime | None) -> None:
        self._timers.pop(run.id, None)
        if self._shutting_down:
            return
        if self.backlog.admit(job.target.type, (run, job, resumed, received_at)):
            self._run_task(run, job, resumed, received_at)
        # else it waits in the launch backlog (`backlog.py`): recorded pending, no task

    def _run_task(
        self,
        run: Run,
        job: Job,
        resumed: bool,
        received_at: datetime | None,
        ctx: EngineContext | None = None,
    ) -> None:
        self._placed.add(run.id)
        # the loop's own `create_task` (uvloop names it in C): `asyncio.create_task` adds a Python
        # wrapper, a `get_running_loop` (a `getpid` system call on 3.11) and `_set_task_name`
        self._tasks[run.id] = loops.current(self._loop).create_task(
            self._attempt(run, job, resumed, received_at, ctx), name=f"jobwire-run-{run.id}"
        )

    async def _attempt(
        self, run: Run, job: Job, resumed: bool, received_at: datetime | None, armed: EngineContext | None
    ) -> None:
        self._fired.pop(run.id, None)  # its target has it now (`execute`)
        target = self.targets.get(job.target.type)
        ctx = armed or EngineContext(self, run, job, resumed, received_at)
        self._contexts[run.id] = ctx
        outcome: Outcome | None = None
        try:
            if target is None:
                outcome = no_target(job)
            else:
                if not self.may_launch():  # `_until_alive`, without its coroutine when alive
                    await self._until_alive(run)
                # from here to the target's start nothing yields (local: to the spawn)
                if target.launch_marker:
                    self.journal.mark(self._name(run.id, run.attempt))
                after = (lambda done: self._await_callback(run, job, done)) if job.callback.wait else None
                release = lambda: self._release(run.id, job.target.type)  # noqa: E731 - a callback wait holds no place
                outcome = await execute_attempt(target, ctx, after, release)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(run.id, None)
            failed = self._failed_by_callback.pop(run.id, None)
            if failed is not None:
                message = failed.message or "the job reported failure"
                outcome = Outcome(RunState.failed, error=RunError(message=message, reason="CallbackFailed"))
            elif reason is not None:
                outcome = Outcome(
                    RunState.cancelled, error=RunError(message=reason, reason="Cancelled"), retryable=False
                )
            elif self._shutting_down:
                if target is not None and target.survives_restart:
                    log.info("left running for adoption after restart", run_id=run.id)
                    return
                outcome = Outcome(
                    RunState.interrupted,
                    error=RunError(
                        message="jobwire stopped while the run was in progress", reason="Interrupted"
                    ),
                    retryable=False,
                )
            else:
                raise
        except Exception as exc:  # the launch journal could not be written (a full disk)
            log.exception("attempt could not be handed over", run_id=run.id, job=job.name)
            outcome = Outcome(
                RunState.failed, error=RunError(message=str(exc) or type(exc).__name__, reason="TargetError")
            )
        finally:
            self._tasks.pop(run.id, None)
            self._contexts.pop(run.id, None)
            self._release(run.id, job.target.type)
            fut = self._callbacks.pop(run.id, None)
            if fut is not None and not fut.done():
                fut.cancel()
        if outcome is not None:
            self._finish(run, job, outcome)

    def _release(self, run_id: str, kind: str) -> None:
        """`run_id`'s attempt is done with its target: the place goes to the next run waiting."""
        if run_id in self._placed:
            self._placed.discard(run_id)
            while (item := self.backlog.done(kind)) is not None:
                if not (item[0].state.terminal or self._shutting_down):  # not cancelled while waiting
                    return self._run_task(*item)

    async def _until_alive(self, run: Run) -> None:
        """Hold a launch while this replica's heartbeat may have expired (a pause, the database
        away): its runs may be someone else's by now. The next heartbeat either confirms it lives
        or finds it declared dead, and it exits (engine/replicas.py)."""
        if self.may_launch():
            return
        log.warning("launch held: this replica's heartbeat may have expired", run_id=run.id)
        await self.wait_alive()

    def _finish(self, run: Run, job: Job, outcome: Outcome) -> None:
        host = self.host
        # each assignment to a run's field is a pydantic `__setattr__` (two Python calls): none
        # for a field that keeps its value
        if outcome.exit_code is not None:
            run.exit_code = outcome.exit_code
        if outcome.http_status is not None:
            run.http_status = outcome.http_status
        if outcome.target_status:
            called_back = run.target_status.get("callback")
            run.target_status = outcome.target_status
            if called_back is not None:  # what the job reported stays on the run
                run.target_status = {**run.target_status, "callback": called_back}
        if outcome.state == RunState.succeeded:
            if run.error is not None:
                run.error = None
        else:
            run.error = outcome.error or RunError(message=outcome.state.value, reason=outcome.state.value)
        retry = (
            outcome.state in (RunState.failed, RunState.timed_out, RunState.interrupted)
            and outcome.retryable
            and run.attempt < job.retry.max_attempts
            and not self._shutting_down
        )
        if retry:
            delay = backoff_delay(job.retry, run.attempt + 1)
            reason = f"attempt {run.attempt} {outcome.state.value}: {run.error.message if run.error else ''}"
            host.transition(run, outcome.state, reason, outcome.status)
            run.attempt += 1
            run.not_before = utcnow() + timedelta(seconds=delay)
            run.started_at = None
            run.target_ref = None
            host.transition(run, RunState.pending, f"retry in {delay:.2f}s")
            self.launch(run, job)
            return
        run.finished_at = utcnow()
        if run.not_before is not None:
            run.not_before = None
        why = run.error.message if run.error and outcome.state != RunState.succeeded else None
        host.transition(run, outcome.state, why, outcome.status)
        attempts = run.attempt
        if self._marked(run.id, attempts):
            self.committer.after_commit(lambda: self.forget(run.id, attempts))
        host.finished(run)

    def _survives(self, run_id: str) -> bool:
        ctx = self._contexts.get(run_id)
        target = self.targets.get(ctx.job.target.type) if ctx else None
        return bool(target and target.survives_restart)

    # ---- cancel / callback / shutdown
    async def cancel(self, run: Run, reason: str) -> bool:
        """Cancel a run's attempt in progress; False if nothing is in progress (queued / waiting)."""
        if self.due.remove(run.id) is not None:
            self._disarm(run.id)
            return False
        timer = self._timers.pop(run.id, None)
        if timer is not None:
            timer.cancel()
            return False
        task = self._tasks.get(run.id)
        if task is None:
            return False
        self._cancel_reasons[run.id] = reason
        ctx = self._contexts.get(run.id)
        stored = self.jobs.get(run.job)
        target = self.targets.get(stored.job.target.type) if stored else None
        if ctx is not None and target is not None:
            try:
                await target.cancel(ctx)
            except Exception as exc:
                log.warning("target cancel failed", run_id=run.id, error=str(exc))
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        if self._cancel_reasons.pop(run.id, None) is not None and stored is not None:
            # cancelled before the attempt's coroutine ever ran: nothing started on the target
            # (unless it was fired at its due time: its answer is not read)
            fired = self._fired.pop(run.id, None)
            if fired is not None:
                fired.disarm()
            self._tasks.pop(run.id, None)
            self._release(run.id, stored.job.target.type)
            self._finish(
                run,
                stored.job,
                Outcome(
                    RunState.cancelled, error=RunError(message=reason, reason="Cancelled"), retryable=False
                ),
            )
        return True

    async def deliver_callback(self, run: Run, ok: bool, message: str | None, data: dict[str, Any]) -> None:
        """A job called back: recorded on the run (`target_status.callback`); `ok: false` fails the
        run now (its attempt is stopped like a cancel, then ends `failed`, retried per policy)."""
        result = CallbackResult(ok=ok, message=message, data=data)
        run.target_status = {
            **run.target_status,
            "callback": {"ok": ok, "message": message, "data": data, "at": utcnow().isoformat()},
        }
        self.committer.update(run)
        fut = self._callbacks.get(run.id)
        if fut is None:
            fut = self._callbacks[run.id] = asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(result)
        task = self._tasks.get(run.id)
        if ok or task is None:
            return
        self._failed_by_callback[run.id] = result
        # stopped after the caller has its answer: the job that called back may be waiting for it
        stop = asyncio.create_task(self._stop_after_callback(run, task), name=f"jobwire-stop-{run.id}")
        self._stopping.add(stop)
        stop.add_done_callback(self._stopping.discard)

    async def _stop_after_callback(self, run: Run, task: asyncio.Task[None]) -> None:
        await asyncio.sleep(0)
        ctx = self._contexts.get(run.id)
        stored = self.jobs.get(run.job)
        target = self.targets.get(stored.job.target.type) if stored else None
        if ctx is not None and target is not None:
            try:
                await target.cancel(ctx)
            except Exception as exc:
                log.warning("target cancel after a failing callback failed", run_id=run.id, error=str(exc))
        task.cancel()

    async def _await_callback(self, run: Run, job: Job, done: Outcome) -> Outcome:
        """`callback.wait`: the target's work ended well; the run ends when the job calls back."""
        try:
            result = await asyncio.wait_for(self.wait_callback(run.id), job.callback.timeout.total_seconds())
        except TimeoutError:
            return Outcome(
                RunState.failed,
                error=RunError(
                    message=f"the job did not call back within {job.callback.timeout} of its end",
                    reason="CallbackTimeout",
                ),
                exit_code=done.exit_code,
                http_status=done.http_status,
            )
        if result.ok:
            return done
        message = result.message or "the job reported failure"
        return Outcome(RunState.failed, error=RunError(message=message, reason="CallbackFailed"))

    async def wait_callback(self, run_id: str) -> CallbackResult:
        fut = self._callbacks.get(run_id)
        if fut is None:
            fut = self._callbacks[run_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(fut)

    def hurry(self) -> None:
        self._hurry.set()

    async def shutdown(self, grace: float) -> None:
        self.due.clear()  # they stay pending in the store: the next start starts them at their time
        for run_id in list(self._primed):
            self._disarm(run_id)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self.read_back.stop()
        self.backlog.drop()  # they stay pending in the store: the next start launches them
        # work that goes on without jobwire (Kubernetes) is not waited for: it is adopted at restart
        tasks = [t for rid, t in self._tasks.items() if not self._survives(rid)]
        if tasks and not self._hurry.is_set():
            log.info("waiting for running runs", count=len(tasks), grace_seconds=grace)
            loop = asyncio.get_running_loop()
            await settle(lambda: tasks, loop.time() + grace, self._hurry)  # cancelled below, once
            if self._hurry.is_set():
                left = sum(not t.done() for t in tasks)
                log.warning("not waiting for running runs any more: stopping them", count=left)
        self._shutting_down = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with suppress(asyncio.CancelledError):
                await t
