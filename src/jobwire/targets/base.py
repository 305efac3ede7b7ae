"""The target contract: where a run executes.

A target has one essential method, `execute(ctx) -> Outcome`: launch the run under its run id as
the target-side name (so a repeat after a crash adopts instead of launching twice), report when it
is started, and return how it ended. The engine owns everything around it: recording, timeouts
(it cancels the task), retries, cancellation, status publishing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry

from jobwire.config import Settings
from jobwire.model import Job, Run, RunError, RunState, StatusBlock


@dataclass(slots=True)
class Outcome:
    """How an attempt ended. `state` is terminal: succeeded, failed, timed_out, cancelled or interrupted."""

    state: RunState
    exit_code: int | None = None
    http_status: int | None = None
    error: RunError | None = None
    retryable: bool = True
    """False when another attempt cannot help (bad definition, 4xx from a validating API)."""
    status: StatusBlock | None = None
    target_status: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class CallbackResult:
    """What a job reported through `POST /api/v1/runs/{id}/callback`."""

    ok: bool
    message: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class RunContext(ABC):
    """The engine's side of one attempt, handed to `Target.execute`."""

    run: Run
    job: Job
    params: dict[str, Any]
    """Validated parameters: the only part of an event that may reach the target."""
    resumed: bool
    """True when jobwire restarted while this attempt was in flight: adopt it, do not relaunch blindly."""
    callback_url: str | None
    callback_token: str
    """Per-run secret the job presents on its callback (Authorization: Bearer ...)."""

    @property
    def target_name(self) -> str:
        """The target-side name of this attempt: the run id, with the attempt number after the first."""
        return self.run.id if self.run.attempt == 1 else f"{self.run.id}-{self.run.attempt}"

    @abstractmethod
    async def started(self, ref: str | None, status: StatusBlock | None = None) -> None:
        """Record the run as running, with the target-side reference (pid, Job name, instance id)."""

    @abstractmethod
    async def report(self, status: StatusBlock, target_status: dict[str, Any] | None = None) -> None:
        """Publish an intermediate status change (e.g. a Kubernetes JobStatus update)."""

    @abstractmethod
    def log(self, data: bytes) -> None:
        """Append to the run's log (size-capped by the engine)."""

    @abstractmethod
    async def callback(self) -> CallbackResult:
        """Wait for the job to call back (targets whose runs report their own end)."""

    async def until_startable(self) -> float | None:
        """Return when the target may take its irreversible step (a spawn, a request, a create).
        A target awaits it last and then starts without yielding: with several replicas the engine
        holds it while this replica's heartbeat may have expired (a pause), since its runs may be
        someone else's by then. Returns the `time.monotonic()` deadline the step must still come
        before — a pause may land after this check, too — or None where there is none (one
        process on its store); a target whose step can be fenced on its far side checks it there
        (the local target: in the child, before the exec; targets/startfence.py)."""
        return None


class Armed(ABC):
    """An attempt made ready ahead of its due time (`Target.arm`): what its start needs is held
    (a connection, the request), so that starting it is one write."""

    @abstractmethod
    def fire(self) -> None:
        """Take the attempt's irreversible step now, without yielding: at the due time, for every
        run due then, one after the other, before any of them is awaited (the engine makes the
        call `prime` gives, which is this one unless a target has a cheaper one). `Target.execute`
        follows for the rest of the attempt. Must not raise."""

    def prime(self) -> Callable[[], object]:
        """The call that fires it, as cheap as it can be made: the engine takes every due run's
        just before their due time and makes them one after the other at that time, holding the
        loop from the first `prime` to the last call (nothing else happens to the attempt in
        between). By default `fire`."""
        return self.fire

    @abstractmethod
    def disarm(self) -> None:
        """It will not be fired (cancelled, its job changed, no place left): give back what it holds."""


class Target(ABC):
    kind: ClassVar[str]
    survives_restart: ClassVar[bool] = False
    """True when a run keeps going without jobwire (Kubernetes, spot): on shutdown it is left
    running and adopted after restart instead of being recorded as interrupted."""
    launch_marker: ClassVar[bool] = True
    """False for a target that relaunches an attempt exactly the same way whether or not it may
    have started (the `http` target: the receiver deduplicates by `Idempotency-Key`, and `resumed`
    changes nothing): the engine then writes no launch-journal line for it (`engine/launches.py`)."""
    launch_limit: ClassVar[int | None] = None
    """Attempts of this kind running at once at most; more wait in the engine's launch backlog
    (`engine/backlog.py`) rather than as tasks inside the target. None: no limit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def bind(
        self,
        run_exists: Callable[[str], Awaitable[bool]] | None = None,
        jobs: Callable[[], Iterable[Job]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """What the engine offers every target before `start`: whether a run id is recorded
        (to tell orphans on the target side), the current job definitions, the metrics registry."""

    def bind_leader(self, leader: Callable[[], bool]) -> None:
        """Whether this replica is the leader (docs/replicas.md): a target's periodic cleanup of
        its resources runs on the leader only. Targets without one ignore it."""

    def prepare(self, job: Job) -> None:
        """Warm what this job's next run needs (a cached request, a connection), called ahead of a
        time trigger's fire, off the due time's burst. Cheap; must not raise."""

    async def arm(self, ctx: RunContext) -> Armed | None:
        """Make `ctx`'s first attempt ready to start at a due time still to come (a time fire
        recorded ahead, `engine/due.py`), or None: the attempt then starts in `execute` as usual
        (the default). Armed and fired, `execute(ctx)` must not take the step again. Must not raise."""
        return None

    async def start(self) -> None:
        """Open connections; called once before the first run."""

    async def close(self) -> None:
        """Release connections; called once at shutdown."""

    def health(self) -> dict[str, str | None]:
        """This target's own background tasks (watches, cleanup loops), each retrying on its own:
        task name → its latest error while it is failing, None while it is healthy. Shown in
        `/readyz`, never critical (runs on other targets go on)."""
        return {}

    @abstractmethod
    async def execute(self, ctx: RunContext) -> Outcome:
        """Run one attempt to its end. Cancellation of the task means: stop watching and, unless
        `survives_restart`, stop the work (a local process is terminated)."""

    async def cancel(self, ctx: RunContext) -> None:
        """Stop the work on the target side (called before the task is cancelled on a user's cancel)."""

    async def logs(self, run: Run, follow: bool = False) -> AsyncIterator[bytes] | None:
        """Stream the run's log from the target side; None means: use the log jobwire captured."""
        return None
