"""MemoryStore: a complete in-process store with the same semantics as SQLite, and no I/O.

A public testing fake (and `memory://` for throwaway runs). It passes the same contract suite as
the SQLite store: the duplicate rule (inside a batch too), whole-batch atomicity, newest-first
keyset paging with the same opaque cursors, retention, and the same normalisation of what it
returns (records go through their JSON form; top-level times come back as aware UTC, a naive time
being taken as UTC). Nothing it hands out aliases what it keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobwire.model import ACTIVE_STATES, Event, EventOutcome, Job, Run, RunState, utcnow
from jobwire.store.base import (
    INTAKE_FIELDS,
    Activity,
    ActivityCount,
    EventQuery,
    Fence,
    Intake,
    OutboxRow,
    Page,
    PruneResult,
    PruneRule,
    Recorded,
    RunQuery,
    SourceCount,
    Store,
    StoredJob,
    StoreError,
    update_allowed,
)
from jobwire.store.queries import check_buckets, check_limit, decode_cursor, encode_cursor, from_us, to_us

_RUN_TIMES = ("created_at", "scheduled_at", "not_before", "started_at", "finished_at")
_EVENT_TIMES = ("received_at", "scheduled_at")
_LISTED_ACTIVE = frozenset({RunState.queued, *ACTIVE_STATES})


def _utc(dt: datetime | None) -> datetime | None:
    return None if dt is None else from_us(to_us(dt))


def _norm_run(run: Run) -> Run:
    r = Run.model_validate_json(run.model_dump_json())
    return r.model_copy(update={f: _utc(getattr(r, f)) for f in _RUN_TIMES})


def _norm_event(event: Event) -> Event:
    e = Event.model_validate_json(event.model_dump_json())
    return e.model_copy(update={f: _utc(getattr(e, f)) for f in _EVENT_TIMES})


def _copy_run(run: Run) -> Run:
    return run.model_copy(deep=True)


def _copy_event(event: Event) -> Event:
    return event.model_copy(deep=True)


@dataclass(slots=True)
class _JobRow:
    definition: str
    origin: str
    paused: bool
    updated_at: datetime

    def stored(self) -> StoredJob:
        return StoredJob(
            job=Job.model_validate_json(self.definition),
            origin=self.origin,
            paused=self.paused,
            updated_at=self.updated_at,
        )


def _run_sort_key(run: Run) -> tuple[int, str]:
    return to_us(run.created_at), run.id


def _event_sort_key(event: Event) -> tuple[int, str]:
    return to_us(event.received_at), event.id


class MemoryStore(Store):
    def __init__(self) -> None:
        self._jobs: dict[str, _JobRow] = {}
        self._runs: dict[str, Run] = {}  # by id
        self._outbox: dict[str, list[tuple[int, str]]] = {}
        self._outbox_seq = 0
        self._run_by_key: dict[str, str] = {}  # key -> id
        self._events: dict[str, Event] = {}  # by id
        self._open = False

    def __repr__(self) -> str:
        return f"MemoryStore(jobs={len(self._jobs)}, runs={len(self._runs)}, events={len(self._events)})"

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")

    async def open(self) -> None:
        if self._open:
            raise StoreError(f"{self!r} is already open")
        self._open = True

    async def close(self) -> None:
        self._open = False

    # ---- jobs

    async def save_job(self, job: Job, origin: str) -> StoredJob:
        self._check_open()
        old = self._jobs.get(job.name)
        paused = True if job.paused else (old.paused if old is not None else False)
        row = _JobRow(job.model_dump_json(), origin, paused, utcnow())
        self._jobs[job.name] = row
        return StoredJob(job=job, origin=origin, paused=paused, updated_at=row.updated_at)

    async def get_job(self, name: str) -> StoredJob | None:
        self._check_open()
        row = self._jobs.get(name)
        return None if row is None else row.stored()

    async def list_jobs(self) -> list[StoredJob]:
        self._check_open()
        return [self._jobs[name].stored() for name in sorted(self._jobs)]

    async def delete_job(self, name: str) -> bool:
        self._check_open()
        return self._jobs.pop(name, None) is not None

    async def set_paused(self, name: str, paused: bool) -> StoredJob | None:
        self._check_open()
        row = self._jobs.get(name)
        if row is None:
            return None
        row.paused = paused
        row.updated_at = utcnow()
        return row.stored()

    # ---- events and runs

    async def record(self, batch: list[Intake]) -> list[Recorded]:
        self._check_open()
        new_runs: dict[str, Run] = {}
        new_keys: dict[str, str] = {}
        new_events: dict[str, Event] = {}
        out: list[Recorded] = []
        for intake in batch:
            event, run = intake.event, intake.run
            if run is not None:
                existing_id = (
                    self._run_by_key.get(run.key)
                    or new_keys.get(run.key)
                    or (run.id if run.id in self._runs or run.id in new_runs else None)
                )
                if existing_id is None:
                    stored = _norm_run(run)
                    new_runs[stored.id] = stored
                    new_keys[stored.key] = stored.id
                    if event.run_id != run.id:
                        event = event.model_copy(update={"run_id": run.id})
                else:
                    existing = new_runs.get(existing_id) or self._runs[existing_id]
                    event = event.model_copy(
                        update={
                            "outcome": EventOutcome.duplicate,
                            "run_id": existing.id,
                            "reason": f"run key already has run {existing.id}",
                        }
                    )
                    run = _copy_run(existing)
            if event.id in self._events or event.id in new_events:
                raise StoreError(
                    f"cannot record the batch: UNIQUE constraint failed: events.id {event.id!r} "
                    "(event ids must be unique)"
                )
            new_events[event.id] = _norm_event(event)
            out.append(Recorded(event=event, run=run))
        for r in new_runs.values():
            if r.event_id not in self._events and r.event_id not in new_events:
                raise StoreError(
                    f"cannot record the batch: FOREIGN KEY constraint failed: run {r.id} "
                    f"names event {r.event_id!r}, which is not recorded"
                )
        # commit
        self._runs.update(new_runs)
        self._run_by_key.update(new_keys)
        self._events.update(new_events)
        return out

    async def commit(
        self,
        batch: list[Intake],
        updates: list[Run],
        outbox: Sequence[OutboxRow] = (),
        fence: Fence | None = None,
    ) -> list[Recorded]:
        # record() and update_runs() never yield: together they are one atomic step, state captured
        self.coordination.check(fence)
        foreign = self.foreign(fence, updates)  # owned by another replica: refused
        recorded = await self.record(batch) if batch else []
        self.coordination.own(fence, recorded)
        if updates:
            mine = [r for r in updates if r.id not in foreign]
            refused = sorted(foreign) + (await self.update_runs(mine) if mine else [])
            self.coordination.ended(mine)
            self.refused(refused)
        for row in outbox:
            self._outbox_seq += 1
            self._outbox.setdefault(row.sink, []).append((self._outbox_seq, row.doc))
        return recorded

    async def outbox_take(self, sink: str, limit: int) -> list[tuple[int, str]]:
        self._check_open()
        return list(self._outbox.get(sink, [])[:limit])

    async def outbox_done(self, sink: str, upto: int) -> None:
        self._check_open()
        self._outbox[sink] = [r for r in self._outbox.get(sink, []) if r[0] > upto]

    async def outbox_size(self, sink: str) -> int:
        self._check_open()
        return len(self._outbox.get(sink, []))

    async def update_runs(self, runs: list[Run]) -> list[str]:
        self._check_open()
        staged: dict[str, Run] = {}
        refused: list[str] = []
        for run in runs:
            old = self._runs.get(run.id)
            if old is None or not update_allowed(old.state, run.state):
                refused.append(run.id)  # pruned meanwhile (SQLite: an UPDATE of no row), or refused
                continue
            new = _norm_run(run)
            kept = {f: getattr(old, f) for f in INTAKE_FIELDS if getattr(new, f) != getattr(old, f)}
            staged[run.id] = new.model_copy(update=kept) if kept else new
        self._runs.update(staged)
        return refused

    async def get_run(self, run_id: str) -> Run | None:
        self._check_open()
        run = self._runs.get(run_id)
        return None if run is None else _copy_run(run)

    async def get_run_by_key(self, key: str) -> Run | None:
        self._check_open()
        run_id = self._run_by_key.get(key)
        return None if run_id is None else _copy_run(self._runs[run_id])

    async def list_runs(self, query: RunQuery) -> Page[Run]:
        self._check_open()
        limit = check_limit(query.limit)
        states = None if query.states is None else {RunState(s) for s in query.states}
        window = _Window(query.since, query.until, query.cursor)
        rows = [
            r
            for r in self._runs.values()
            if (query.job is None or r.job == query.job)
            and (states is None or r.state in states)
            and (query.event_id is None or r.event_id == query.event_id)
            and (query.trigger is None or r.trigger == query.trigger)
            and window.admits(_run_sort_key(r))
        ]
        rows.sort(key=_run_sort_key, reverse=True)
        page = rows[:limit]
        cursor = encode_cursor(*_run_sort_key(page[-1])) if len(rows) > limit else None
        return Page(items=[_copy_run(r) for r in page], next_cursor=cursor)

    async def active_runs(self) -> list[Run]:
        self._check_open()
        rows = [r for r in self._runs.values() if r.state in _LISTED_ACTIVE]
        rows.sort(key=_run_sort_key)
        return [_copy_run(r) for r in rows]

    async def last_runs(self, jobs: Sequence[str]) -> dict[str, Run]:
        self._check_open()
        wanted = set(jobs)
        out: dict[str, Run] = {}
        for r in self._runs.values():
            if r.job in wanted and (r.job not in out or _run_sort_key(r) > _run_sort_key(out[r.job])):
                out[r.job] = r
        return {job: _copy_run(r) for job, r in out.items()}

    async def activity(
        self, since: datetime, bucket: timedelta, buckets: int, events_since: datetime | None = None
    ) -> Activity:
        self._check_open()
        width = check_buckets(bucket, buckets)
        start = to_us(since)
        end = start + buckets * width
        runs: dict[tuple[int, str], int] = {}
        for r in self._runs.values():
            at = to_us(r.created_at)
            if start <= at < end:
                k = ((at - start) // width, r.state.value)
                runs[k] = runs.get(k, 0) + 1
        events: dict[tuple[str, str], int] = {}
        ev_start = start if events_since is None else to_us(events_since)
        for e in self._events.values():
            if to_us(e.received_at) >= ev_start:
                j = (e.source, e.outcome.value)
                events[j] = events.get(j, 0) + 1
        return Activity(
            runs=[ActivityCount(b, RunState(s), n) for (b, s), n in sorted(runs.items())],
            events=[SourceCount(src, EventOutcome(o), n) for (src, o), n in sorted(events.items())],
        )

    async def get_event(self, event_id: str) -> Event | None:
        self._check_open()
        event = self._events.get(event_id)
        return None if event is None else _copy_event(event)

    async def list_events(self, query: EventQuery) -> Page[Event]:
        self._check_open()
        limit = check_limit(query.limit)
        outcomes = None if query.outcomes is None else {EventOutcome(o) for o in query.outcomes}
        window = _Window(query.since, query.until, query.cursor)
        rows = [
            e
            for e in self._events.values()
            if (query.job is None or e.job == query.job)
            and (outcomes is None or e.outcome in outcomes)
            and window.admits(_event_sort_key(e))
        ]
        rows.sort(key=_event_sort_key, reverse=True)
        page = rows[:limit]
        cursor = encode_cursor(*_event_sort_key(page[-1])) if len(rows) > limit else None
        return Page(items=[_copy_event(e) for e in page], next_cursor=cursor)

    async def last_fire(self, job: str, trigger: str) -> datetime | None:
        self._check_open()
        times = [
            e.scheduled_at
            for e in self._events.values()
            if e.job == job and e.trigger == trigger and e.scheduled_at is not None
        ]
        return max(times) if times else None

    async def last_fires(self) -> dict[tuple[str, str], datetime]:
        self._check_open()
        out: dict[tuple[str, str], datetime] = {}
        for e in self._events.values():
            if e.job is None or e.scheduled_at is None:
                continue
            seen = out.get((e.job, e.trigger))
            if seen is None or e.scheduled_at > seen:
                out[(e.job, e.trigger)] = e.scheduled_at
        return out

    async def prune(self, job: str, keep: int, older_than: datetime) -> PruneResult:
        self._check_open()
        cut = to_us(older_than)
        job_runs = sorted((r for r in self._runs.values() if r.job == job), key=_run_sort_key, reverse=True)
        kept = {r.id for r in job_runs[: max(0, keep)]}
        doomed = [r for r in job_runs if r.state.terminal and to_us(r.created_at) < cut and r.id not in kept]
        for r in doomed:
            del self._runs[r.id]
            del self._run_by_key[r.key]
        made_by = {r.event_id for r in self._runs.values()}
        latest_fire: dict[str, int] = {}
        for e in self._events.values():
            if e.job == job and e.scheduled_at is not None:
                us = to_us(e.scheduled_at)
                latest_fire[e.trigger] = max(us, latest_fire.get(e.trigger, us))
        gone = [
            e.id
            for e in self._events.values()
            if e.job == job
            and to_us(e.received_at) < cut
            and (e.run_id is None or e.run_id not in self._runs)
            and e.id not in made_by
            and not (e.scheduled_at is not None and to_us(e.scheduled_at) == latest_fire.get(e.trigger))
        ]
        for event_id in gone:
            del self._events[event_id]
        return PruneResult(runs=sorted(r.id for r in doomed), events=len(gone))

    async def prune_jobs(self, rules: Sequence[PruneRule]) -> PruneResult:
        self._check_open()
        cuts = {r.job: (max(0, r.keep), to_us(r.older_than)) for r in rules}
        # read: what would go, as SQLite's prune_jobs_runs / prune_jobs_events
        by_job: dict[str, list[Run]] = {}
        for r in self._runs.values():
            if r.job in cuts:
                by_job.setdefault(r.job, []).append(r)
        doomed: list[Run] = []
        for job, runs in by_job.items():
            keep, cut = cuts[job]
            runs.sort(key=_run_sort_key, reverse=True)
            doomed += [r for r in runs[keep:] if r.state.terminal and to_us(r.created_at) < cut]
        doomed_ids = {r.id for r in doomed}
        made_by = {r.event_id for r in self._runs.values() if r.id not in doomed_ids}
        latest_fire: dict[tuple[str, str], int] = {}
        for e in self._events.values():
            if e.job is not None and e.job in cuts and e.scheduled_at is not None:
                us, k = to_us(e.scheduled_at), (e.job, e.trigger)
                latest_fire[k] = max(us, latest_fire.get(k, us))
        gone = [
            e.id
            for e in self._events.values()
            if e.job is not None
            and e.job in cuts
            and to_us(e.received_at) < cuts[e.job][1]
            and (e.run_id is None or e.run_id not in self._runs or e.run_id in doomed_ids)
            and e.id not in made_by
            and not (
                e.scheduled_at is not None and to_us(e.scheduled_at) == latest_fire.get((e.job, e.trigger))
            )
        ]
        if not doomed and not gone:
            return PruneResult()
        # write
        for r in doomed:
            del self._runs[r.id]
            del self._run_by_key[r.key]
        for event_id in gone:
            del self._events[event_id]
        return PruneResult(runs=sorted(doomed_ids), events=len(gone))


class _Window:
    """since (inclusive), until (exclusive) and the cursor (strictly older) over a `(time, id)` key."""

    __slots__ = ("after", "since", "until")

    def __init__(self, since: datetime | None, until: datetime | None, cursor: str | None) -> None:
        self.since = None if since is None else to_us(since)
        self.until = None if until is None else to_us(until)
        self.after: tuple[int, str] | None = None if cursor is None else decode_cursor(cursor)

    def admits(self, key: tuple[int, Any]) -> bool:
        us = key[0]
        if self.since is not None and us < self.since:
            return False
        if self.until is not None and us >= self.until:
            return False
        return self.after is None or key < self.after
