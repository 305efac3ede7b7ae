"""`callback.wait` for runs of the runner fleet (docs/fleet.md): the runner makes the call and
reports its outcome like any other; on the scheduler, a run whose work ended well then stays
`running` until the job calls back — `POST /runs/{id}/callback` reaches any scheduler replica and is
forwarded to the one holding the run — or until `callback.timeout` (and the job's `timeout`, which
covers the wait too, as in one process) passes: failed, `CallbackTimeout`.

The wait is written on the run before the runner's outcome is acknowledged: `target_status`
gets `awaiting_callback` (since when, and the HTTP status / exit code the work ended with). So a
scheduler that restarts — or another replica that takes the run over — finds the run `running`
with that mark and waits for the callback again, for what is left of the timeout, instead of
waiting for a result the broker no longer holds.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Protocol

from jobwire.model import Job, Run, RunError, RunState, utcnow
from jobwire.targets.base import CallbackResult, Outcome

MARK = "awaiting_callback"


class WaitHost(Protocol):
    """What the waits need from the fleet launcher."""

    committer: Any
    host: Any

    async def wait_callback(self, run_id: str) -> CallbackResult:
        """The job's callback (at once if it came already)."""

    def _finish(self, run: Run, job: Job, outcome: Outcome) -> None:
        """End the attempt: retry, or the run's end."""


class CallbackWaits:
    """Runs of the fleet whose work ended well, waiting for their job's callback."""

    def __init__(self, attempts: WaitHost) -> None:
        self.attempts = attempts
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self.tasks)

    def awaits(self, run: Run, job: Job, outcome: Outcome) -> bool:
        """The runner reported `outcome`: True when the run now waits for its callback instead."""
        if not job.callback.wait or outcome.state != RunState.succeeded:
            return False
        run.http_status = outcome.http_status if outcome.http_status is not None else run.http_status
        run.exit_code = outcome.exit_code if outcome.exit_code is not None else run.exit_code
        mark = {
            "since": utcnow().isoformat(),
            "http_status": outcome.http_status,
            "exit_code": outcome.exit_code,
        }
        run.target_status = {**run.target_status, **outcome.target_status, MARK: mark}
        self.attempts.committer.update(run)  # committed before the outcome is acknowledged
        self.attempts.host.publish(run, outcome.status)
        self._start(run, job)
        return True

    def resume(self, run: Run, job: Job) -> bool:
        """After a restart or a take-over: True when `run` was waiting for its callback."""
        if run.state != RunState.running or not isinstance(run.target_status.get(MARK), dict):
            return False
        self._start(run, job)
        return True

    def _start(self, run: Run, job: Job) -> None:
        if run.id not in self.tasks:
            self.tasks[run.id] = asyncio.create_task(self._wait(run, job), name=f"jobwire-callback-{run.id}")

    def _limit(self, run: Run, job: Job, since: datetime) -> float:
        now = utcnow()
        limit = job.callback.timeout.total_seconds() - (now - since).total_seconds()
        if job.timeout is not None and run.started_at is not None:
            limit = min(limit, job.timeout.total_seconds() - (now - run.started_at).total_seconds())
        return max(0.0, limit)

    async def _wait(self, run: Run, job: Job) -> None:
        mark = dict(run.target_status.get(MARK) or {})
        since = datetime.fromisoformat(mark["since"]) if mark.get("since") else utcnow()
        http_status, exit_code = mark.get("http_status"), mark.get("exit_code")
        try:
            result = await asyncio.wait_for(self.attempts.wait_callback(run.id), self._limit(run, job, since))
        except TimeoutError:
            outcome = Outcome(
                RunState.failed,
                error=RunError(
                    message=f"the job did not call back within {job.callback.timeout} of its end",
                    reason="CallbackTimeout",
                ),
                exit_code=exit_code,
                http_status=http_status,
            )
        else:
            if result.ok:
                outcome = Outcome(RunState.succeeded, exit_code=exit_code, http_status=http_status)
            else:
                message = result.message or "the job reported failure"
                outcome = Outcome(RunState.failed, error=RunError(message=message, reason="CallbackFailed"))
        finally:  # cancelled (a cancel, a shutdown): the caller decides; the mark stays for a restart
            self.tasks.pop(run.id, None)
        run.target_status = {k: v for k, v in run.target_status.items() if k != MARK}
        self.attempts._finish(run, job, outcome)

    def cancel(self, run_id: str) -> bool:
        """Stop waiting for `run_id` (a user's cancel): True when it was waiting."""
        task = self.tasks.pop(run_id, None)
        if task is None:
            return False
        task.cancel()
        return True

    def shutdown(self) -> None:
        """Stop waiting here; the marks stay on the runs: the next start waits again."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()


__all__ = ["MARK", "CallbackWaits"]
