"""Time-trigger fires handed in to the intake; those the store could not take (a full disk) are
kept and retried until it does.

A fire keeps its scheduled time, so its run key is the one it would have had: retried, it is
recorded once (a key the store already holds is a duplicate, never a second run). While fires
wait, each job's catch-up policy applies as it does after downtime: `skip` gives them up,
`latest` keeps only the newest, `all` keeps the first `max`, and none older than `window`.

Memory is bounded: beyond `limit` fires in all, a trigger's fires are no longer kept one by one;
the trigger remembers only since when it has missed fires and, once the store takes writes again,
its fire times since then are computed like a catch-up after downtime (`missed_fires`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog

from jobwire.engine.errors import LeaseUncertain, NotLeader, Unavailable
from jobwire.engine.metrics import Metrics
from jobwire.engine.scheduler import missed_fires
from jobwire.model import Admission, CatchupPolicy, Incoming, Job, utcnow
from jobwire.store import Fenced

log = structlog.get_logger(__name__)

PENDING_LIMIT = 10_000
"""Fires kept one by one at most (a few hundred bytes each); beyond, per-trigger catch-up."""

Submit = Callable[[list[Incoming]], Awaitable[list[Admission | BaseException]]]
Lookup = Callable[[str], "tuple[Job, bool] | None"]
"""A job's definition and whether it is paused, or None if it is gone."""

Key = tuple[str, str]
_US = timedelta(microseconds=1)


class PendingFires:
    def __init__(
        self,
        submit: Submit,
        lookup: Lookup,
        metrics: Metrics | None = None,
        limit: int = PENDING_LIMIT,
        backoff_min: float = 0.5,
        backoff_max: float = 5.0,
    ) -> None:
        self._submit = submit
        self._lookup = lookup
        self._metrics = metrics
        self.limit = limit
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._times: dict[Key, set[datetime]] = {}
        self._since: dict[Key, datetime] = {}
        """Triggers beyond the bound: the earliest fire time not recorded."""
        self._count = 0
        self._inflight = 0
        """Fires taken by the retry loop and not yet committed (still counted as pending)."""
        self._work = asyncio.Event()
        """Set by `add`: there is something to retry (wakes an idle loop, never shortens a backoff)."""
        self._now = asyncio.Event()
        """Set by `wake`: the store took a write elsewhere, retry without waiting out the backoff."""
        self.recorded = 0
        """Fires recorded by a retry (for tests and the chaos run)."""
        self.given_up = 0
        """Fires dropped by the job's catch-up policy (skip, latest, window, max) or a job gone."""

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return self._count

    @property
    def overflowed(self) -> int:
        """Triggers whose missed fires are computed (catch-up) instead of kept one by one."""
        return len(self._since)

    def __bool__(self) -> bool:
        return bool(self._count or self._since)

    def summary(self) -> dict[str, Any]:
        return {"fires_pending": self._count + self._inflight, "triggers_catching_up": len(self._since)}

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.fires_pending.set(self._count + self._inflight)

    # ------------------------------------------------------------------ intake
    async def hand_in(self, batch: list[Incoming]) -> None:
        """Record a batch of due fires; those the store cannot take (a full disk) are kept and
        retried with their scheduled times — the clock goes on meanwhile."""
        try:
            results: list[Admission | BaseException] = await self._submit(batch)
        except Unavailable:  # shutting down: the next start catches up per each job's policy
            log.warning("time triggers not recorded: shutting down", count=len(batch))
            return
        except Exception as exc:
            results = [exc] * len(batch)
        batch, results = self._leader_only(batch, results)
        failed = [inc for inc, res in zip(batch, results, strict=True) if isinstance(res, BaseException)]
        if failed:
            error = next(r for r in results if isinstance(r, BaseException))
            (log.warning if isinstance(error, LeaseUncertain) else log.error)(
                "time triggers could not be recorded; kept and retried until the store takes them",
                count=len(failed),
                jobs=sorted({inc.job or "" for inc in failed})[:10],
                error=str(error),
            )
            self.add(failed)
        else:
            self.wake()  # the store takes writes: retry what waits now

    def _leader_only(
        self, batch: list[Incoming], results: list[Admission | BaseException]
    ) -> tuple[list[Incoming], list[Admission | BaseException]]:
        """Leave out the fires refused because this replica is not (or no longer) the leader: they
        are not kept — the leader fires them, or catches them up per each job's policy when it
        takes over (counted as given up here). Those refused while its lease renewal was late
        (`LeaseUncertain`) stay: if the renewal succeeds nobody else catches them up."""
        pairs = [
            (i, r)
            for i, r in zip(batch, results, strict=True)
            if isinstance(r, LeaseUncertain) or not isinstance(r, NotLeader | Fenced)
        ]
        dropped = len(batch) - len(pairs)
        if dropped:
            self.given_up += dropped
            log.info("time-trigger fires left to the leader: this replica is not the leader", count=dropped)
        return [i for i, _ in pairs], [r for _, r in pairs]

    def add(self, fires: Iterable[Incoming]) -> None:
        """Keep fires that could not be recorded; the retry loop takes them."""
        for inc in fires:
            if inc.job is None or inc.scheduled_at is None:
                continue
            key = (inc.job, inc.trigger)
            if key in self._since:
                self._since[key] = min(self._since[key], inc.scheduled_at)
                continue
            if self._count >= self.limit:
                held = self._times.pop(key, set())
                self._count -= len(held)
                self._since[key] = min([inc.scheduled_at, *held])
                log.warning(
                    "too many unrecorded time-trigger fires to keep; this trigger catches up instead",
                    job=inc.job,
                    trigger=inc.trigger,
                    since=self._since[key].isoformat(),
                )
                continue
            times = self._times.setdefault(key, set())
            if inc.scheduled_at not in times:
                times.add(inc.scheduled_at)
                self._count += 1
        self._set_gauge()
        self._work.set()

    def wake(self) -> None:
        """The store took a write: retry now instead of at the end of the backoff."""
        if self:
            self._now.set()

    # ------------------------------------------------------------------ policy
    def _due(self, now: datetime) -> list[Incoming]:
        """Take every kept fire the job's catch-up policy still wants, as fires to submit."""
        out: list[Incoming] = []
        keys = set(self._times) | set(self._since)
        for key in sorted(keys):
            held = self._times.pop(key, set())
            self._count -= len(held)
            since = self._since.pop(key, None)
            found = self._lookup(key[0])
            job, paused = found if found is not None else (None, True)
            trig = job.trigger(key[1]) if job is not None else None
            if job is None or paused or trig is None or trig.type not in ("cron", "interval", "at"):
                self.given_up += len(held)
                continue
            times = sorted(held)
            if since is not None:
                times = sorted(set(times) | set(missed_fires(trig, since - _US, now, job.catchup)))
            kept = _apply_policy(times, job, now)
            self.given_up += len(times) - len(kept)
            if len(kept) < len(times):
                log.info(
                    "unrecorded time-trigger fires given up per the job's catch-up policy",
                    job=key[0],
                    trigger=key[1],
                    policy=job.catchup.policy.value,
                    given_up=len(times) - len(kept),
                )
            out.extend(
                Incoming(job=key[0], trigger=key[1], source=trig.type, scheduled_at=t, received_at=now)
                for t in kept
            )
        self._set_gauge()
        return out

    # ------------------------------------------------------------------ the retry loop
    async def run(self) -> None:
        """Retry kept fires with backoff (and jitter) until the store takes them; runs supervised."""
        backoff = self.backoff_min
        while True:
            if not self:
                self._work.clear()
                await self._work.wait()
                backoff = self.backoff_min
            self._now.clear()
            delay = backoff * (0.8 + 0.4 * random.random())
            try:
                async with asyncio.timeout(delay):
                    await self._now.wait()  # a successful write elsewhere: try now
            except TimeoutError:
                pass
            due = self._due(utcnow())
            if not due:
                continue
            # still pending (in /readyz and the gauge) until the store has taken them
            self._inflight = len(due)
            self._set_gauge()
            try:
                results = await self._submit(due)
            except Exception:
                self.add(due)  # shutting down or the store is gone: keep them; stop cancels this loop
                raise
            finally:
                self._inflight = 0
                self._set_gauge()
            due, results = self._leader_only(due, results)
            failed = [inc for inc, res in zip(due, results, strict=True) if isinstance(res, BaseException)]
            self.recorded += len(due) - len(failed)
            if failed:
                self.add(failed)
                backoff = min(backoff * 2, self.backoff_max)
            else:
                log.info("unrecorded time-trigger fires recorded", count=len(due))
                backoff = self.backoff_min


def _apply_policy(times: list[datetime], job: Job, now: datetime) -> list[datetime]:
    """The fire times (sorted) a job's catch-up policy keeps, as after downtime."""
    policy = job.catchup
    if policy.policy == CatchupPolicy.skip:
        return []
    floor = now - policy.window
    times = [t for t in times if t >= floor]
    if policy.policy == CatchupPolicy.latest:
        return times[-1:]
    return times[: policy.max]
