"""Time triggers (cron, interval, at) in one heap of next fire times.

The loop sleeps until the earliest due time or until the heap changes — never polls. When it
wakes, it takes every entry that is due, submits them together (the committer turns a burst of
10,000 due schedules into a few transactions), and pushes each trigger's next fire time computed
from its *due* time, so lateness never accumulates into drift.

Recorded ahead (`ahead` seconds, `JOBWIRE_RECORD_AHEAD`): the heap is ordered by when a fire is
*recorded*, its due time less `ahead` for a job without a concurrency limit, so its event and run
are committed while the clock would otherwise sleep and the run waits, `pending`, for its due time
(`engine/due.py` starts it then, or gives it up if its job was paused, deleted or redefined
meanwhile). A trigger has at most one fire recorded ahead: the next is recorded no earlier than the
previous one's due time.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from jobwire.cron import CronExpr
from jobwire.engine.supervisor import Spawn
from jobwire.model import (
    AtTrigger,
    Catchup,
    CatchupPolicy,
    CronTrigger,
    Incoming,
    IntervalTrigger,
    Job,
    utcnow,
)

log = structlog.get_logger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Fire = Callable[[list[Incoming]], None]
"""Hands a batch of due fires to the engine without waiting for their commit."""
Prepare = Callable[[list[str], float], None]
"""Told, while the clock sleeps, the jobs due at its next wake-up and when (a Unix time): the
engine warms what their runs will need (`Engine._prepare`) so the burst at the due time is lighter."""
PREPARE_AHEAD = 0.05
"""Seconds: a next due time nearer than this gets no preparing (nothing to gain, a wake-up to lose)."""


DUE_TOLERANCE = 0.0005
"""Seconds: an entry this close to its due time is taken as due (the loop's timers are in ms)."""


BURST_COST = 0.0002
"""Seconds of recording per fire of a burst (measured: 10,000 fires due at once were recorded in
~2 s on the 2-core bench machine): a burst of n fires is recorded n × this earlier still."""
BURST_MIN = 500
"""Fires at one time below which no extra lead is taken (the default lead covers them)."""
BURST_MAX_LEAD = 10.0


def burst_lead(n: int) -> float:
    """Extra seconds ahead to record `n` fires due together (`TimeScheduler(ahead=…)` only)."""
    return 0.0 if n < BURST_MIN else min(BURST_MAX_LEAD, n * BURST_COST)


def wait_ahead(delay: float) -> float:
    """How long to wait for a due time `delay` seconds away. Linux lets a poll or epoll wait of T
    seconds end up to T/1000 late when nothing else wakes the loop (T/200 for a niced process; at
    most 0.1 s: the timer slack `select_estimate_accuracy` gives it). The clock asleep until a fire
    45 s away woke 45 ms late; one an hour away, 100 ms. So a wait longer than 10 ms ends 1 % of it
    (at most 0.1 s) plus 1 ms ahead, and the rest is waited for again; the last wait is a few ms,
    whose slack is a few µs."""
    if delay <= 0.01:
        return delay
    return delay - min(0.1, delay / 100) - 0.001


def next_fire(trigger: Any, after: datetime) -> datetime | None:
    """The first fire time of a time trigger strictly after `after` (UTC), or None if it has none."""
    if isinstance(trigger, CronTrigger):
        return CronExpr.parse(trigger.cron).next_after(after, ZoneInfo(trigger.timezone))
    if isinstance(trigger, IntervalTrigger):
        # integer microseconds: float division at ~1e9 s / 0.2 s loses the step and repeats a fire time
        anchor = trigger.start or EPOCH
        step = trigger.interval // timedelta(microseconds=1)
        if after < anchor:
            return anchor
        elapsed = (after - anchor) // timedelta(microseconds=1)
        return anchor + timedelta(microseconds=(elapsed // step + 1) * step)
    if isinstance(trigger, AtTrigger):
        return trigger.at if trigger.at > after else None
    return None


def missed_fires(trigger: Any, last: datetime | None, now: datetime, policy: Catchup) -> list[datetime]:
    """Fire times in (last, now] to run after downtime, per the job's catch-up policy.

    A trigger never fired before (`last` is None) has nothing to catch up — except an `at`
    trigger whose time passed within the window while jobwire was down.
    """
    if policy.policy == CatchupPolicy.skip:
        return []
    floor = now - policy.window
    if last is None:
        if isinstance(trigger, AtTrigger) and floor <= trigger.at <= now:
            return [trigger.at]
        return []
    start = max(last, floor - timedelta(microseconds=1))
    times: list[datetime] = []
    t = next_fire(trigger, start)
    while t is not None and t <= now:
        times.append(t)
        if policy.policy == CatchupPolicy.all and len(times) >= policy.max:
            break
        if policy.policy == CatchupPolicy.latest and len(times) > 1:
            times.pop(0)
        t = next_fire(trigger, t)
    return times


class TimeScheduler:
    def __init__(
        self,
        fire: Fire,
        on_lateness: Callable[[float], None] | None = None,
        prepare: Prepare | None = None,
        ahead: float = 0.0,
    ) -> None:
        self._fire = fire
        self.ahead = ahead
        """Seconds a fire is recorded before its due time (jobs without a concurrency limit)."""
        self._lead: dict[str, float] = {}
        """Each scheduled job's lead: `ahead`, or 0 for a job with a concurrency limit."""
        self._fired: dict[tuple[str, str], tuple[Any, datetime]] = {}
        """Each trigger's fire last recorded ahead (the trigger, its due time): a redefinition that
        keeps the trigger does not record that fire a second time."""
        self._on_lateness = on_lateness
        self._prepare = prepare
        self._prepared = 0.0
        """The due time whose jobs were last handed to `prepare` (each due time once)."""
        self._heap: list[tuple[float, int, str, str, int, datetime, float]] = []
        """(when to record, seq, job, trigger id, generation, due time, earliest time to record):
        the last is the trigger's previous due time (at most one fire of a trigger ahead)."""
        self._sized = 0.0
        """The record time at the heap's head whose burst was last counted (`burst_lead`)."""
        self._extra = 0.0
        """Seconds the fires at the heap's head are recorded earlier still: a burst takes time."""
        self._triggers: dict[tuple[str, str], Any] = {}
        self._keys: dict[str, list[tuple[str, str]]] = {}
        """The `_triggers` keys of each job: (re)scheduling a job must not scan every trigger
        (10,000 jobs loaded one by one made startup quadratic: 3 s)."""
        self._generation: dict[str, int] = {}
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, spawn: Spawn | None = None) -> None:
        """Start the clock; `spawn` runs it supervised (restarted if it ever raises)."""
        if self._task is not None and not self._task.done():
            return  # running already
        name = "jobwire-scheduler"
        self._task = spawn(name, self._loop) if spawn else asyncio.create_task(self._loop(), name=name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def set_job(self, job: Job, paused: bool, now: datetime | None = None) -> None:
        """(Re)schedule a job's time triggers; replaces whatever was scheduled for it."""
        gen = self._generation.get(job.name, 0) + 1
        self._generation[job.name] = gen
        self._forget(job.name)
        if paused:
            self._wake.set()
            return
        now = now or utcnow()
        lead = self._lead[job.name] = self.ahead if job.concurrency.limit is None else 0.0
        for tid, trig in zip(job.trigger_ids(), job.triggers, strict=True):
            if trig.type not in ("cron", "interval", "at"):
                continue
            key = (job.name, tid)
            fired = self._fired.get(key)
            after = fired[1] if fired is not None and fired[0] == trig and fired[1] > now else now
            due = next_fire(trig, after)
            self._triggers[key] = trig
            self._keys.setdefault(job.name, []).append(key)
            if due is not None:
                self._push(due, job.name, tid, gen, lead, after)
        self._wake.set()

    def remove_job(self, name: str) -> None:
        self._generation[name] = self._generation.get(name, 0) + 1
        self._forget(name)
        self._lead.pop(name, None)
        for key in [k for k in self._fired if k[0] == name]:
            del self._fired[key]
        self._wake.set()

    def upcoming(self, limit: int) -> list[tuple[datetime, str, str]]:
        """The next `limit` scheduled fires across all jobs as (time, job, trigger), soonest first
        (what the dashboard's overview shows). Walks the heap's tree smallest first, so it reads
        about `limit` entries (plus superseded ones on the way), not the whole heap."""
        heap = self._heap
        out: list[tuple[datetime, str, str]] = []
        frontier = [(heap[0], 0)] if heap else []
        while frontier and len(out) < limit:
            (_, _, job, tid, gen, due, _), i = heapq.heappop(frontier)
            if self._generation.get(job) == gen and (job, tid) in self._triggers:
                out.append((due, job, tid))
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return out

    def _due_at(self, ts: float) -> list[str]:
        """The jobs with a fire due at `ts` (±0.5 ms), read off the heap's tree (about as many
        entries as are due then, not the whole heap)."""
        heap = self._heap
        names: list[str] = []
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            entry = heap[i]
            if entry[0] > ts + DUE_TOLERANCE:
                continue  # a heap: nothing below is due sooner
            if self._generation.get(entry[2]) == entry[4]:
                names.append(entry[2])
            stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
        return names

    def _forget(self, name: str) -> None:
        for key in self._keys.pop(name, ()):
            self._triggers.pop(key, None)

    def _push(self, due: datetime, job: str, tid: str, gen: int, lead: float, after: datetime) -> None:
        """Schedule a fire due at `due`, recorded `lead` seconds ahead but not before `after` (the
        previous fire's due time: at most one fire of a trigger is recorded ahead)."""
        self._seq += 1
        ts = due.timestamp()
        floor = after.timestamp()
        at = max(ts - lead, floor) if lead else ts
        heapq.heappush(self._heap, (at, self._seq, job, tid, gen, due, floor if lead else ts))

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            if not self._heap:
                await self._wake.wait()
                continue
            head = self._heap[0][0]
            names: list[str] | None = None  # the jobs due at the head, read off the heap once
            if self.ahead and head != self._sized:
                names = self._due_at(head)
                self._sized, self._extra = head, burst_lead(len(names))
            delay = head - self._extra - time.time()
            if delay > PREPARE_AHEAD and self._prepare is not None and head != self._prepared:
                self._prepared = head
                self._prepare(names if names is not None else self._due_at(head), head)
            if delay > 0:
                try:
                    async with asyncio.timeout(wait_ahead(delay)):
                        await self._wake.wait()
                    continue  # the heap changed: look again
                except TimeoutError:
                    if self._heap[0][0] - self._extra > time.time():
                        continue  # woken ahead on purpose (`wait_ahead`) or by ms rounding: never early
            now = utcnow()
            now_ts = now.timestamp()
            batch: list[Incoming] = []
            held: list[tuple[float, int, str, str, int, datetime, float]] = []
            while self._heap and self._heap[0][0] <= now_ts + DUE_TOLERANCE + self._extra:
                entry = heapq.heappop(self._heap)
                at, _, job, tid, gen, due, floor = entry
                if self._generation.get(job) != gen or (job, tid) not in self._triggers:
                    continue  # superseded by a redefinition, pause or delete
                if at > now_ts + DUE_TOLERANCE and floor > now_ts:
                    held.append(entry)  # taken early for a burst, but its previous fire is not due yet
                    continue
                trig = self._triggers[(job, tid)]
                if due > now:  # recorded ahead: lateness is measured when it starts (engine/due.py)
                    self._fired[(job, tid)] = (trig, due)
                elif self._on_lateness:
                    self._on_lateness(now_ts - due.timestamp())
                batch.append(
                    Incoming.model_construct(
                        job=job,
                        trigger=tid,
                        source=trig.type,
                        payload=None,
                        params=None,
                        event_key=None,
                        scheduled_at=due,
                        input_location=None,
                        received_at=now,
                    )
                )
                nxt = next_fire(trig, due)
                if nxt is not None:
                    self._push(nxt, job, tid, gen, self._lead.get(job, 0.0), due)
            for entry in held:
                heapq.heappush(self._heap, entry)
            if held:  # what is left at the head is recorded at its own time
                self._sized, self._extra = self._heap[0][0], 0.0
            if batch:
                try:
                    self._fire(batch)
                except Exception as exc:  # never let one bad batch stop the clock
                    log.error("firing time triggers failed", error=str(exc), count=len(batch))
