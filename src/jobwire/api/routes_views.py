"""Read-only views the dashboard needs that the resource routes do not give in one call: who the
presented token is (`/whoami`), the overview (`/dashboard/overview`: one aggregate read of the
store plus two small index reads), and jobs as a person reads them (`/dashboard/jobs`: paged,
triggers in words with their next fire times in the job's time zone, the last run's state).

Everything here is masked as the resource routes mask it; nothing here writes.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from jobwire.api.auth import READ, Authenticator, Credentials, EngineDep
from jobwire.api.routes_runs import mask_run
from jobwire.api.schemas import ERROR_RESPONSES, mask_job
from jobwire.crontext import describe
from jobwire.engine import Engine, JobNotFound
from jobwire.engine.scheduler import next_fire
from jobwire.model import CronTrigger, IntervalTrigger, Run, RunState, utcnow
from jobwire.store import RunQuery, StoredJob

router = APIRouter(tags=["dashboard"], responses=ERROR_RESPONSES)

NEXT_FIRES = 3
MAX_JOBS_PAGE = 200
WINDOWS = {"hour": (timedelta(hours=1), timedelta(minutes=5)), "day": (timedelta(days=1), timedelta(hours=1))}
RATE_WINDOW = timedelta(hours=1)
"""Events per source are counted over the last hour, whatever the chart's window."""
FAILED = [RunState.failed, RunState.timed_out, RunState.interrupted]
ACTIVE = [RunState.queued, RunState.pending, RunState.running]


class WhoAmI(BaseModel):
    auth: bool = Field(description="false when the API is open (no token configured, loopback bind)")
    scopes: list[Literal["read", "write"]] = Field(description="what the presented token may do")


class TriggerView(BaseModel):
    id: str
    type: str
    text: str = Field(description="the trigger in words (cron in English, with its time zone)")
    timezone: str | None = None
    next: list[datetime] = Field(
        default_factory=list, description=f"the next {NEXT_FIRES} fire times, in the job's time zone"
    )


class LastRun(BaseModel):
    id: str
    state: RunState
    created_at: datetime
    finished_at: datetime | None = None


class JobView(BaseModel):
    name: str
    description: str = ""
    paused: bool
    origin: str
    target: str = Field(description="the target's type and where it points (secrets masked)")
    triggers: list[TriggerView]
    parameters: int = Field(description="how many parameters the job declares")
    last_run: LastRun | None = None


class JobViewPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None = None
    total: int = Field(description="jobs matching the filter")


class Bucket(BaseModel):
    start: datetime
    counts: dict[str, int] = Field(description="runs created in this bucket, by state")


class SourceRate(BaseModel):
    source: str
    total: int
    per_minute: float
    outcomes: dict[str, int]


class NextFire(BaseModel):
    job: str
    trigger: str
    at: datetime


class Overview(BaseModel):
    window: Literal["hour", "day"]
    since: datetime
    bucket_seconds: int
    buckets: list[Bucket]
    totals: dict[str, int] = Field(description="runs created in the window, by state")
    sources: list[SourceRate] = Field(description="events received in the last hour, by kind of source")
    running: list[Run] = Field(description="queued, pending and running runs, newest first (at most 20)")
    failures: list[Run] = Field(description="the latest failed, timed out or interrupted runs (at most 10)")
    next_fires: list[NextFire] = Field(description="the next time-trigger fires across all jobs")
    jobs: int
    paused: int


@router.get("/whoami", response_model=WhoAmI, dependencies=READ, summary="What the presented token may do")
async def whoami(request: Request, credentials: Credentials) -> WhoAmI:
    """`scopes` of the bearer token (never the token or its name): the dashboard hides the write
    actions from a read token."""
    auth: Authenticator = request.app.state.auth
    if auth.open_access:
        return WhoAmI(auth=False, scopes=["read", "write"])
    assert credentials is not None  # READ has checked it
    scopes = auth.scopes_of(credentials.credentials) or frozenset()
    return WhoAmI(auth=True, scopes=[s for s in ("read", "write") if s in scopes])


def _trigger_text(t: Any, shown: dict[str, Any]) -> str:
    kind = t.type
    if isinstance(t, CronTrigger):
        return f"{describe(t.cron)} ({t.timezone})"
    if isinstance(t, IntervalTrigger):
        return f"every {_span(t.interval)}"
    if kind == "at":
        return f"once at {shown.get('at')}"
    if kind == "api":
        return "when called over the API"
    if kind == "webhook":
        return "on a signed webhook delivery"
    if kind == "after":
        return f"after a run of {shown.get('job')} {shown.get('on', 'succeeded')}"
    where = [
        f"{k} {v}"
        for k, v in shown.items()
        if k not in ("type", "id", "params") and isinstance(v, str | int) and not isinstance(v, bool)
    ]
    return f"{kind}: {', '.join(where[:3])}" if where else kind


def _span(td: timedelta) -> str:
    """600 s → "10 minutes"; 90 s → "90 seconds"; 1.5 s → "1.5 seconds"."""
    seconds = td.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} second{'s' if seconds != 1 else ''}"


def _next_fires(t: Any, zone: ZoneInfo, now: datetime) -> list[datetime]:
    out: list[datetime] = []
    at: datetime | None = now
    while at is not None and len(out) < NEXT_FIRES:
        at = next_fire(t, at)
        if at is not None:
            out.append(at.astimezone(zone))
    return out


def _target_text(target: dict[str, Any]) -> str:
    kind = str(target.get("type", "?"))
    for key in ("url", "image", "template", "command"):
        value = target.get(key)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        if value:
            text = str(value)
            return f"{kind}: {text[:80]}{'…' if len(text) > 80 else ''}"
    return kind


def job_view(engine: Engine, stored: StoredJob, now: datetime, last: Run | None) -> JobView:
    job = stored.job
    shown = mask_job(job)
    triggers: list[TriggerView] = []
    for tid, t, raw in zip(job.trigger_ids(), job.triggers, shown.get("triggers", []), strict=False):
        tz = getattr(t, "timezone", None)
        zone = ZoneInfo(tz) if tz else UTC
        fires = _next_fires(t, zone, now) if t.type in ("cron", "interval", "at") else []  # type: ignore[arg-type]
        triggers.append(TriggerView(id=tid, type=t.type, text=_trigger_text(t, raw), timezone=tz, next=fires))
    return JobView(
        name=job.name,
        description=job.description,
        paused=stored.paused,
        origin=stored.origin,
        target=_target_text(shown.get("target") or {}),
        triggers=triggers,
        parameters=len(job.parameters),
        last_run=None
        if last is None
        else LastRun(id=last.id, state=last.state, created_at=last.created_at, finished_at=last.finished_at),
    )


@router.get(
    "/dashboard/jobs",
    response_model=JobViewPage,
    dependencies=READ,
    summary="Jobs, as the dashboard lists them",
)
async def list_job_views(
    engine: EngineDep,
    q: Annotated[str | None, Query(max_length=128, description="names containing this (any case)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_JOBS_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> JobViewPage:
    """Ordered by name, paged; read from the engine's copy of the definitions (no store scan)."""
    names = sorted(engine.jobs)
    if q:
        needle = q.lower()
        names = [n for n in names if needle in n.lower()]
    start = bisect_right(names, cursor) if cursor else 0
    chosen = names[start : start + limit]
    now = utcnow()
    last = await engine.store.last_runs(chosen)
    items = [job_view(engine, engine.jobs[n], now, last.get(n)) for n in chosen if n in engine.jobs]
    more = start + limit < len(names)
    return JobViewPage(items=items, next_cursor=chosen[-1] if more and chosen else None, total=len(names))


@router.get(
    "/dashboard/jobs/{name}",
    response_model=JobView,
    dependencies=READ,
    summary="One job, as the dashboard shows it",
)
async def get_job_view(engine: EngineDep, name: str) -> JobView:
    stored = engine.jobs.get(name)
    if stored is None:
        raise JobNotFound(f"no job named {name!r}")
    last = await engine.store.last_runs([name])
    return job_view(engine, stored, utcnow(), last.get(name))


@router.get(
    "/dashboard/overview", response_model=Overview, dependencies=READ, summary="The dashboard's overview"
)
async def overview(
    engine: EngineDep,
    window: Annotated[
        Literal["hour", "day"], Query(description="runs of the last hour (5-minute bars) or day (hourly)")
    ] = "hour",
) -> Overview:
    span, bucket = WINDOWS[window]
    now = utcnow()
    width = int(bucket.total_seconds())
    # aligned to the bucket width, so bars do not shift between two refreshes of the page
    end = datetime.fromtimestamp((int(now.timestamp()) // width + 1) * width, UTC)
    since = end - span
    n = int(span / bucket)
    rate_since = now - RATE_WINDOW
    activity = await engine.store.activity(since, bucket, n, events_since=rate_since)
    buckets = [Bucket(start=since + i * bucket, counts={}) for i in range(n)]
    totals: dict[str, int] = {}
    for c in activity.runs:
        if 0 <= c.bucket < n:
            buckets[c.bucket].counts[c.state.value] = c.total
        totals[c.state.value] = totals.get(c.state.value, 0) + c.total
    minutes = RATE_WINDOW.total_seconds() / 60
    rates: dict[str, SourceRate] = {}
    for s in activity.events:
        rate = rates.setdefault(s.source, SourceRate(source=s.source, total=0, per_minute=0, outcomes={}))
        rate.total += s.total
        rate.outcomes[s.outcome.value] = s.total
    for rate in rates.values():
        rate.per_minute = round(rate.total / minutes, 3)
    running = await engine.store.list_runs(RunQuery(states=ACTIVE, limit=20))
    failures = await engine.store.list_runs(RunQuery(states=FAILED, since=now - timedelta(days=7), limit=10))
    fires = [NextFire(job=j, trigger=t, at=at) for at, j, t in engine.scheduler.upcoming(10)]
    jobs = list(engine.jobs.values())
    return Overview(
        window=window,
        since=since,
        bucket_seconds=width,
        buckets=buckets,
        totals=totals,
        sources=sorted(rates.values(), key=lambda r: r.source),
        running=[mask_run(engine, r) for r in running.items],
        failures=[mask_run(engine, r) for r in failures.items],
        next_fires=fires,
        jobs=len(jobs),
        paused=sum(1 for j in jobs if j.paused),
    )
