"""One attempt on its target, under the job's strict timeout: the part of running a run that is
the same wherever it happens — in the engine's own process (`dispatch.Attempts`) or on a runner
of the fleet (`runner.Runner`).

A target that raises becomes a `failed` outcome (TargetError); a timeout cancels the call, asks the
target to stop the work (`Target.cancel`) and becomes `timed_out`. Cancellation of the calling task
is passed through: what it means (a user's cancel, a shutdown) is the caller's to decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from jobwire.model import Job, RunError, RunState, utcnow
from jobwire.targets.base import Outcome, RunContext, Target

log = structlog.get_logger(__name__)

AfterSuccess = Callable[[Outcome], Awaitable[Outcome]]


def no_target(job: Job) -> Outcome:
    return Outcome(
        RunState.failed,
        error=RunError(message=f"no target of type {job.target.type!r} is configured", reason="NoTarget"),
        retryable=False,
    )


def remaining_timeout(ctx: RunContext) -> float | None:
    """The job's timeout; for an attempt resumed after a crash, what is left of it."""
    job, run = ctx.job, ctx.run
    timeout = job.timeout.total_seconds() if job.timeout else None
    if timeout is not None and ctx.resumed and run.started_at:
        timeout = max(0.0, timeout - (utcnow() - run.started_at).total_seconds())
    return timeout


async def execute_attempt(
    target: Target,
    ctx: RunContext,
    after_success: AfterSuccess | None = None,
    after_execute: Callable[[], None] | None = None,
) -> Outcome:
    """Run `ctx`'s attempt on `target` to its end, within the job's timeout. `after_execute`: called
    once the target's part is over (before `after_success`, e.g. a wait for the job's callback)."""
    job, run = ctx.job, ctx.run
    timeout = remaining_timeout(ctx)
    cm: asyncio.Timeout | None = None
    try:
        if timeout is None:  # no job timeout: no context manager either (1.4 µs a run)
            return await _attempt(target, ctx, after_success, after_execute)
        async with asyncio.timeout(timeout) as cm:
            return await _attempt(target, ctx, after_success, after_execute)
    except TimeoutError:
        if cm is None or not cm.expired():
            raise
        try:
            await target.cancel(ctx)
        except Exception as exc:
            log.warning("target cancel after timeout failed", run_id=run.id, error=str(exc))
        return Outcome(
            RunState.timed_out, error=RunError(message=f"timed out after {job.timeout}", reason="Timeout")
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("target raised", run_id=run.id, job=job.name)
        return Outcome(
            RunState.failed, error=RunError(message=str(exc) or type(exc).__name__, reason="TargetError")
        )


async def _attempt(
    target: Target,
    ctx: RunContext,
    after_success: AfterSuccess | None,
    after_execute: Callable[[], None] | None,
) -> Outcome:
    outcome = await target.execute(ctx)
    if after_execute is not None:
        after_execute()
    if outcome.state == RunState.succeeded and after_success is not None:
        outcome = await after_success(outcome)
    return outcome


__all__ = ["execute_attempt", "no_target", "remaining_timeout"]
