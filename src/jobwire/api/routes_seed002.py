"""Seed 002's REST service (`schedule`, `list`, `status`, `callback`) as jobwire jobs and runs.

A scheduled container is a job named `seed002-…` (or the `name` given) with one `at` trigger and a
`spot` target, labelled `seed: "002"`; its run is an ordinary run (it shows in `jobwire runs` and
`/runs`), whose id is known when it is scheduled (a pure function of job, trigger and time). A
time already past runs at once (seed 002: "scheduled with an earlier timestamp ... will launch").

The seed names the operations and their inputs (a Docker image, the date-time, a list of
environment variables) but its sample bodies are not part of it; the field names accepted here are
the seed's words and their usual spellings (`image`/`dockerImage`, `datetime`/`dateTime`/`date`,
`env`/`envVars`/`environment`, each variable as `"NAME=value"`, `{"name", "value"}` or an object).

Auth: `schedule` needs the `write` scope, `list`/`status` `read`; `callback` is authenticated by the
run's own callback token (`JOBWIRE_CALLBACK_TOKEN`), like `POST /runs/{id}/callback`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import uuid
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobwire.api.auth import READ, WRITE, EngineDep, callback_bearer
from jobwire.api.schemas import ERROR_RESPONSES, ApiError
from jobwire.engine import Engine, JobNotFound
from jobwire.model import (
    NAME_RE,
    AtTrigger,
    Catchup,
    Incoming,
    Job,
    Run,
    RunError,
    RunState,
    SpotTarget,
    parse_duration,
    run_id_for,
    time_run_key,
    utcnow,
)

router = APIRouter(prefix="/seed002", tags=["seed 002"], responses=ERROR_RESPONSES)

LABEL = {"seed": "002"}
TRIGGER = "at"
DEFAULT_TIMEOUT = timedelta(hours=6)
"""A scheduled container that never calls back is terminated after this long (unless `timeout`)."""

SeedState = Literal[
    "Scheduled", "Requested", "Running", "FinishedOK", "FinishedNOK", "TerminatedOK", "Terminated"
]


def _env_list(value: Any) -> Any:
    """`["A=1"]`, `[{"name": "A", "value": "1"}]` or `{"A": "1"}` → `{"A": "1"}`."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str] = {}
        for item in value:
            if isinstance(item, str) and "=" in item:
                k, _, v = item.partition("=")
                out[k] = v
            elif isinstance(item, dict) and ("name" in item or "Name" in item):
                out[str(item.get("name", item.get("Name")))] = str(item.get("value", item.get("Value", "")))
            else:
                raise ValueError(f'each variable is "NAME=value" or {{"name", "value"}}, got {item!r}')
        return out
    return value


class ScheduleIn(BaseModel):
    """`schedule`: a Docker image, the date-time, a list of environment variables."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: str = Field(
        min_length=1, max_length=1024, validation_alias=AliasChoices("image", "dockerImage", "docker_image")
    )
    datetime: dt.datetime = Field(
        validation_alias=AliasChoices("datetime", "dateTime", "date_time", "date", "time", "scheduledTime")
    )
    env: dict[str, str] = Field(
        default_factory=dict, validation_alias=AliasChoices("env", "envVars", "env_vars", "environment")
    )
    name: str | None = Field(default=None, pattern=NAME_RE, validation_alias=AliasChoices("name", "id"))
    timeout: str | None = None
    """How long the container may run without calling back (default 6h)."""

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        return _env_list(v)

    @field_validator("datetime")
    @classmethod
    def _aware(cls, v: dt.datetime) -> dt.datetime:
        if v.tzinfo is None:
            raise ValueError("a time needs a zone or offset, e.g. 2026-12-01T10:00:00Z")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


class SeedJob(BaseModel):
    """A scheduled container as seed 002 shows it, with jobwire's ids beside."""

    id: str
    image: str
    datetime: dt.datetime
    env: list[str]
    status: SeedState
    run_id: str
    run_state: RunState | None = None
    instance_id: str | None = None
    spot_request_id: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    error: RunError | None = None


class SeedJobList(BaseModel):
    items: list[SeedJob]


class SeedCallbackIn(BaseModel):
    """`callback`: `{"status": "FinishedOK" | "FinishedNOK"}` (also `OK`/`NOK`), or `{"ok": bool}`."""

    model_config = ConfigDict(extra="allow")

    status: str | None = None
    ok: bool | None = None
    message: str | None = None


def _at(job: Job) -> dt.datetime:
    trig = job.trigger(TRIGGER)
    assert isinstance(trig, AtTrigger)
    return trig.at


def run_key_of(job: Job) -> str:
    """The run key of a seed 002 job's `at` trigger."""
    return time_run_key(job.name, TRIGGER, _at(job))


async def run_of(engine: Engine, job: Job) -> Run | None:
    """The run of a seed 002 job's `at` trigger, once recorded. Found by its run key: a run
    recorded by an older jobwire has the id that version derived from the key."""
    key = run_key_of(job)
    run = engine.runs.get(run_id_for(key))
    return run if run is not None else await engine.store.get_run_by_key(key)


def _is_seed(job: Job) -> bool:
    return (
        job.labels.get("seed") == "002"
        and isinstance(job.target, SpotTarget)
        and job.trigger(TRIGGER) is not None
    )


def seed_state(run: Run | None) -> SeedState:
    if run is None:
        return "Scheduled"
    if run.state == RunState.succeeded:
        return "TerminatedOK"
    if run.state.terminal:
        return "Terminated"
    state = run.target_status.get("state")
    if state in ("Requested", "Running", "FinishedOK", "FinishedNOK"):
        return state  # type: ignore[no-any-return]
    return "Scheduled"


async def _doc(engine: Engine, job: Job) -> SeedJob:
    run = await run_of(engine, job)
    spec = job.target
    assert isinstance(spec, SpotTarget)
    ts = run.target_status if run else {}
    return SeedJob(
        id=job.name,
        image=spec.image,
        datetime=_at(job),
        env=[f"{k}={v}" for k, v in spec.env.items()],
        status=seed_state(run),
        run_id=run.id if run else run_id_for(run_key_of(job)),
        run_state=run.state if run else None,
        instance_id=ts.get("instance_id"),
        spot_request_id=ts.get("spot_request_id"),
        history=list(ts.get("history", [])),
        error=run.error if run else None,
    )


def _seed_job(engine: Engine, name: str) -> Job:
    stored = engine.jobs.get(name)
    if stored is None or not _is_seed(stored.job):
        raise JobNotFound(f"no seed 002 job {name!r}")
    return stored.job


def _job(name: str, body: ScheduleIn) -> Job:
    at = body.datetime.astimezone(dt.UTC)
    return Job(
        name=name,
        description=f"seed 002: {body.image[:200]} at {at.isoformat()}",
        triggers=[AtTrigger(id=TRIGGER, at=at)],
        target=SpotTarget(image=body.image, env=body.env),
        timeout=parse_duration(body.timeout) if body.timeout else DEFAULT_TIMEOUT,
        catchup=Catchup(window=timedelta(days=1)),
        labels=LABEL,
    )


@router.post(
    "/schedule",
    response_model=SeedJob,
    status_code=status.HTTP_201_CREATED,
    dependencies=WRITE,
    summary="schedule: run a Docker image on a spot instance at a date-time",
)
async def schedule(engine: EngineDep, body: ScheduleIn) -> SeedJob:
    name = body.name or f"seed002-{uuid.uuid4().hex[:12]}"
    if name in engine.jobs:
        raise ApiError(409, "Conflict", f"a job named {name!r} exists")
    try:
        job = _job(name, body)
    except (ValidationError, ValueError, OverflowError) as exc:
        raise ApiError(422, "ValidationError", f"cannot schedule this: {str(exc)[:500]}") from None
    await engine.put_job(job)
    at = _at(job)
    if at <= utcnow():  # past: the clock will not fire it; run it now, under the run id it would have
        await engine.submit(Incoming(job=name, trigger=TRIGGER, source="at", scheduled_at=at))
    return await _doc(engine, job)


@router.get("/list", response_model=SeedJobList, dependencies=READ, summary="list: the scheduled jobs")
async def list_jobs(engine: EngineDep) -> SeedJobList:
    jobs = sorted((s.job for s in engine.jobs.values() if _is_seed(s.job)), key=lambda j: (_at(j), j.name))
    return SeedJobList(items=[await _doc(engine, j) for j in jobs])


@router.get("/status/{name}", response_model=SeedJob, dependencies=READ, summary="status: one job's status")
async def job_status(engine: EngineDep, name: str) -> SeedJob:
    return await _doc(engine, _seed_job(engine, name))


@router.post(
    "/callback/{name}",
    response_model=SeedJob,
    summary="callback: the container reports its end (FinishedOK / FinishedNOK)",
    description="Authenticated by the run's own callback token (`Authorization: Bearer "
    "$JOBWIRE_CALLBACK_TOKEN`), not by an API token. 409 if the run has already finished.",
)
async def callback(
    engine: EngineDep,
    name: str,
    body: SeedCallbackIn,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(callback_bearer)],
) -> SeedJob:
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "Unauthorized",
            "a callback needs `Authorization: Bearer <the run's callback token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    stored = engine.jobs.get(name)
    run = await run_of(engine, stored.job) if stored is not None and _is_seed(stored.job) else None
    if run is None or not hmac.compare_digest(engine.callback_token(run.id), credentials.credentials):
        raise ApiError(403, "Forbidden", "wrong callback token for this job")
    assert stored is not None
    if body.ok is not None:
        ok = body.ok
    else:
        word = (body.status or "").strip().upper()
        if word not in ("FINISHEDOK", "FINISHEDNOK", "OK", "NOK"):
            raise ApiError(
                422, "ValidationError", 'callback: expected "status": "FinishedOK" or "FinishedNOK"'
            )
        ok = word in ("FINISHEDOK", "OK")
    data = {k: v for k, v in (body.model_extra or {}).items()}
    await engine.callback(run.id, credentials.credentials, ok, body.message, data)
    return await _doc(engine, stored.job)
