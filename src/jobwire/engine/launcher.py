"""The launch seam: what the run state machine (`runs.RunStates`), recovery and the engine need
from whatever starts a run's attempts. Two implementations:

* `dispatch.Attempts` — in process (`--role all`, the default): each attempt runs on its target as
  a task of this process;
* `fleet.FleetAttempts` — the runner fleet (`--role scheduler`): each attempt is published on the
  RabbitMQ work queue, and what runners report back is applied here.

Both share the retry, backoff and end-of-run bookkeeping (`Attempts._finish`); they differ only in
where the attempt runs, so no other part of the engine asks which one it has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

from jobwire.engine.backlog import LaunchBacklog
from jobwire.engine.supervisor import Supervisor
from jobwire.model import Job, Run


class Launcher(Protocol):
    backlog: LaunchBacklog
    """Attempts waiting for a place on their target kind (in process; the fleet's runners have slots)."""
    may_launch: Callable[[], bool]
    """False while this replica's heartbeat may have expired (engine/replicas.py)."""
    wait_alive: Callable[[], Awaitable[None]]
    start_deadline: Callable[[], float | None]
    """Until when a launch may still start (a target fences on it), or None."""

    @property
    def count(self) -> int:
        """Attempts in progress (or handed over and not ended)."""

    async def open(self, supervisor: Supervisor) -> None:
        """At start, holding the store's lock, before reconcile."""

    def recovered(self) -> None:
        """Reconcile and catch-up are done."""

    def launch(self, run: Run, job: Job, resumed: bool = False, received_at: datetime | None = None) -> None:
        """Start an attempt now, or at `run.not_before` for a retry; `resumed`: it may have started."""

    def was_launched(self, run: Run) -> bool:
        """Whether this attempt may have been handed over before a crash."""

    async def cancel(self, run: Run, reason: str) -> bool:
        """Stop the attempt in progress; False when none is (the caller records the cancel)."""

    async def deliver_callback(self, run: Run, ok: bool, message: str | None, data: dict[str, Any]) -> None:
        """A job called back."""

    async def refresh_metrics(self) -> None:
        """Before a scrape of /metrics."""

    async def shutdown(self, grace: float) -> None:
        """Stop: let attempts end within `grace`, then stop or leave them per target."""

    def hurry(self) -> None:
        """A second stop signal: `shutdown` waits no longer for attempts to end (its grace ends now)."""

    def close(self) -> None:
        """After the last commit."""


__all__ = ["Launcher"]
