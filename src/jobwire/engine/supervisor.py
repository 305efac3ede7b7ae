"""Supervision of the engine's background tasks: none may die silently.

Long-lived loops (the committer, the scheduler, sink workers, job-file reload, retention, the
retry of unrecorded time-trigger fires) run under `Supervisor.loop`: when one raises, the error is
logged, the task is marked failing (last error, restarts, since when) and the loop is started again
after an exponential backoff with jitter; the backoff starts over once the loop has run for
`healthy_after` seconds without failing. A loop that returns normally is done (not restarted).

One-shot tasks (`Supervisor.once`: a batch of time-trigger fires, replacing a run) get their
exception retrieved and logged — never asyncio's "Task exception was never retrieved".

`health()` is what `/readyz` and the metrics show; a failing task marked `critical` (one the
engine cannot take work without) makes the engine not ready.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from jobwire.engine.metrics import Metrics

log = structlog.get_logger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]
"""Makes a fresh coroutine of the loop: called again on every restart."""

Spawn = Callable[[str, LoopFactory], "asyncio.Task[None]"]
"""How a component (committer, scheduler, status hub) starts its loop under supervision."""

BACKOFF_MIN = 0.5
BACKOFF_MAX = 60.0
HEALTHY_AFTER = 30.0


@dataclass(slots=True)
class TaskHealth:
    """One supervised loop as `/readyz` shows it."""

    name: str
    critical: bool
    state: str = "running"
    """running | failing (raised less than `healthy_after` ago, or waiting to restart) | stopped"""
    restarts: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    failing_since: float | None = None
    """Wall-clock time (epoch seconds) of the first failure of the current run of failures."""
    last_failure: float | None = None
    """Monotonic time of the latest restart after a failure (the healthy period counts from it), not shown."""
    retry_in: float | None = None
    """The backoff before the latest restart (seconds, with jitter)."""
    waiting: bool = False
    """Between a failure and its restart (the backoff), not shown."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "critical": self.critical,
            "state": self.state,
            "restarts": self.restarts,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "failing_since": self.failing_since,
            "retry_in": self.retry_in,
        }


_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def describe(exc: BaseException) -> str:
    """One line for logs and `/readyz` (which is open): the exception type and its message, cut at
    300 chars, with any `user:password@` of a URL masked."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class Supervisor:
    def __init__(
        self,
        metrics: Metrics | None = None,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self._metrics = metrics
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self._health: dict[str, TaskHealth] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ long-lived loops
    def loop(self, name: str, factory: LoopFactory, critical: bool = False) -> asyncio.Task[None]:
        """Run `factory()` until it returns, restarting it with backoff whenever it raises.
        Cancelling the returned task stops the loop (and marks it stopped); `cancel_all` does."""
        task = self._start(name, factory, critical)
        self._track(task)
        return task

    def spawn(self, name: str, factory: LoopFactory) -> asyncio.Task[None]:
        """A supervised loop critical to taking work (the committer, the scheduler), started for a
        component that stops it itself (not by `cancel_all`): the `Spawn` handed to components."""
        return self._start(name, factory, critical=True)

    def spawn_optional(self, name: str, factory: LoopFactory) -> asyncio.Task[None]:
        """`spawn` for a loop the engine takes work without (a sink worker): shown, not critical."""
        return self._start(name, factory, critical=False)

    def _start(self, name: str, factory: LoopFactory, critical: bool) -> asyncio.Task[None]:
        base, n = name, 1
        while name in self._health and self._health[name].state != "stopped":
            n += 1
            name = f"{base}#{n}"  # two sinks of one kind: two names
        health = self._health[name] = TaskHealth(name, critical)
        self._up(name, 1)
        return asyncio.create_task(self._supervise(health, factory), name=name)

    async def _supervise(self, health: TaskHealth, factory: LoopFactory) -> None:
        backoff = self.backoff_min
        me = asyncio.current_task()
        assert me is not None
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._run(health, factory, me)
                    health.state = "stopped"  # the loop ended by itself: done, not a failure
                    self._up(health.name, 0)
                    return
                except asyncio.CancelledError:
                    if me.cancelling():
                        raise  # stopped
                    exc: Exception = RuntimeError("the loop ended cancelled, but nobody stopped it")
                except Exception as failed:
                    exc = failed
                # a failure: logged, shown, restarted after the backoff
                now = time.monotonic()
                if now - started >= self.healthy_after:
                    backoff = self.backoff_min  # it had been healthy: start the backoff over
                    health.consecutive_failures = 0
                if health.consecutive_failures == 0:
                    health.failing_since = time.time()
                health.consecutive_failures += 1
                health.last_error = describe(exc)
                health.last_failure = now
                health.state = "failing"
                delay = health.retry_in = backoff * (0.8 + 0.4 * random.random())
                log.error(
                    "background task failed; restarting",
                    task=health.name,
                    error=health.last_error,
                    failures=health.consecutive_failures,
                    retry_in=round(delay, 2),
                    exc_info=exc,
                )
                self._up(health.name, 0)
                health.waiting = True
                await asyncio.sleep(delay)
                health.waiting = False
                health.last_failure = time.monotonic()  # the healthy period counts from the restart
                backoff = min(backoff * 2, self.backoff_max)
                health.restarts += 1
                if self._metrics is not None:
                    self._metrics.task_restarts.labels(health.name).inc()
                self._up(health.name, 1)
        except asyncio.CancelledError:
            health.state = "stopped"
            self._up(health.name, 0)
            raise

    @staticmethod
    async def _run(health: TaskHealth, factory: LoopFactory, me: asyncio.Task[Any]) -> None:
        """One run of the loop, in a task of its own. A stop cancels the supervising task `me`;
        only a stop does, so `me.cancelling()` tells a stop from the loop's own errors — also when
        the loop's cleanup, cancelled, raises something else (a rollback on a dead connection), which
        would otherwise be taken for a failure and restarted, and the stop would wait forever. A
        library's own timeout that cancels the task it runs in (and may leave it counted) touches the
        loop's task, never `me`."""
        inner = asyncio.create_task(factory(), name=f"{health.name}:run")
        try:
            await inner
        except Exception as exc:
            if not me.cancelling():
                raise
            log.warning("background task stopped; its cleanup raised", task=health.name, error=describe(exc))
            raise asyncio.CancelledError from exc

    def _up(self, name: str, value: int) -> None:
        if self._metrics is not None:
            self._metrics.task_up.labels(name).set(value)

    # ------------------------------------------------------------------ one-shot tasks
    def once(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A task that runs once: its exception, if any, is retrieved and logged."""
        task = asyncio.create_task(coro, name=name)
        self._track(task)
        task.add_done_callback(self._retrieve)
        return task

    def _retrieve(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self._metrics is not None:
            self._metrics.task_failures.labels(task.get_name()).inc()
        log.error("background task failed", task=task.get_name(), error=describe(exc), exc_info=exc)

    # ------------------------------------------------------------------ bookkeeping
    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        """Every task started by `loop` or `once` that has not ended yet."""
        return self._tasks

    async def cancel_all(self) -> None:
        """Cancel every task started by `loop` or `once` and wait for them (an engine stop); loops
        started with `spawn` are stopped by their components."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> list[TaskHealth]:
        """Every supervised loop; `failing` until it has run `healthy_after` s since its last restart."""
        now = time.monotonic()
        for h in self._health.values():
            if (
                h.state == "failing"
                and h.last_failure is not None
                and now - h.last_failure >= self.healthy_after
                and not h.waiting
            ):
                h.state = "running"
                h.consecutive_failures = 0
                h.failing_since = None
        return list(self._health.values())

    def failing(self, critical_only: bool = False) -> list[TaskHealth]:
        return [h for h in self.health() if h.state == "failing" and (h.critical or not critical_only)]


async def settle(
    tasks: Callable[[], Collection[asyncio.Future[Any]]], deadline: float, hurry: asyncio.Event
) -> None:
    """Wait until none of `tasks()` (read again as each ends: more may come) is running, the loop's
    clock reaches `deadline`, or `hurry` is set (a second stop signal). Cancels nothing."""
    loop = asyncio.get_running_loop()
    while (
        (running := [t for t in tasks() if not t.done()])
        and not hurry.is_set()
        and (left := deadline - loop.time()) > 0
    ):
        hurried = asyncio.ensure_future(hurry.wait())
        try:
            await asyncio.wait({*running, hurried}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurried.cancel()
