"""Retention: each job keeps its newest N runs and none past its TTL; the rest (runs, their
events and logs) is deleted by a sweep every `retention_interval`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from jobwire.engine.metrics import Metrics
from jobwire.engine.runlogs import RunLogs
from jobwire.model import utcnow
from jobwire.store import PruneRule, Store, StoredJob

log = structlog.get_logger(__name__)

FULL_SWEEP_EVERY = 3600.0
"""Seconds between sweeps of every job (the others sweep only the jobs whose runs ended)."""


class Retention:
    def __init__(
        self, store: Store, jobs: Mapping[str, StoredJob], logs: RunLogs, metrics: Metrics, interval: float
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.logs = logs
        self.metrics = metrics
        self.interval = interval
        self.touched: set[str] = set()
        """Jobs whose runs ended since the last sweep (added to by the run state machine)."""
        self.leader: Callable[[], bool] = lambda: True
        """Whether this replica leads (docs/replicas.md): only the leader sweeps."""
        self._last_full: float | None = None
        """Monotonic time of the last full sweep; kept when the supervisor restarts the loop."""

    async def sweep(self, only_touched: bool = False) -> int:
        """Apply each job's retention: keep the newest N and drop what is past the TTL.
        `only_touched`: just the jobs whose runs ended since the last sweep (the hourly full sweep
        catches TTL expiry of quiet jobs), so an idle jobwire with 10,000 jobs writes nothing.
        One store call per sweep: one read, and one write transaction only if something goes."""
        now = utcnow()
        touched = set(self.touched)  # the set itself is shared: emptied, never replaced
        self.touched.clear()
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

    async def loop(self) -> None:
        """A sweep every `interval`, of every job once an hour. Runs supervised: a sweep that
        raises (the store failing) is not swallowed here but goes to the supervisor — logged,
        shown in `/readyz`, the loop restarted with backoff — and the hour still counts from the
        last full sweep that succeeded."""
        if self._last_full is None:
            self._last_full = time.monotonic() - FULL_SWEEP_EVERY + self.interval
        while True:
            await asyncio.sleep(self.interval)
            if not self.leader():
                self.touched.clear()  # the leader sweeps every job at least hourly
                continue
            full = time.monotonic() - self._last_full >= FULL_SWEEP_EVERY
            await self.sweep(only_touched=not full)
            if full:
                self._last_full = time.monotonic()


__all__ = ["Retention"]
