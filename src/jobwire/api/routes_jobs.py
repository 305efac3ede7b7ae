"""/jobs: create, read, replace, merge-patch, delete, pause, resume; trigger runs; webhooks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.openapi.models import Example

from jobwire.api.auth import READ, WRITE, EngineDep
from jobwire.api.routes_runs import admission_response
from jobwire.api.schemas import (
    ERROR_RESPONSES,
    ApiError,
    ErrorBody,
    ErrorDetail,
    JobList,
    JobOut,
    Seed003Job,
    mask_job,
    merge_patch,
    unmask_job,
)
from jobwire.engine import Engine, JobNotFound
from jobwire.jobfile import (
    parse_job,
    seed003_obstacles,
    to_seed003,
    unset_secret_text,
    unset_webhook_secrets,
)
from jobwire.model import Job, Run
from jobwire.redact import mask_url
from jobwire.store import StoredJob

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

JOB_EXAMPLES: dict[str, Example] = {
    "jobwire": Example(
        summary="A jobwire job",
        value={
            "name": "nightly-report",
            "description": "Build the report",
            "triggers": [{"cron": "0 2 * * *", "timezone": "Europe/Amsterdam"}, "api"],
            "target": {"type": "http", "url": "https://reports.example.com/build", "method": "POST"},
            "parameters": [{"name": "day", "type": "string", "default": "yesterday"}],
        },
    ),
    "cron-http": Example(
        summary="An HTTP call on a cron schedule (seed 003's form)",
        value={
            "name": "CLI",
            "description": "From CLI",
            "schedule": "* * * * *",
            "job": {"callback_url": "https://example.com/hook", "http_method": "post", "payload": {}},
        },
    ),
}

JobBody = Annotated[dict[str, Any], Body(openapi_examples=JOB_EXAMPLES)]


def job_out(stored: StoredJob) -> JobOut:
    data = mask_job(stored.job)
    data.update(origin=stored.origin, paused=stored.paused, updated_at=stored.updated_at)
    return JobOut.model_validate(data)


async def _get(engine: Engine, name: str) -> StoredJob:
    stored = await engine.store.get_job(name)
    if stored is None:
        raise JobNotFound(f"no job named {name!r}")
    return stored


def _refuse_file_job(stored: StoredJob, verb: str) -> None:
    if stored.origin.startswith("file:"):
        path = stored.origin.removeprefix("file:")
        raise ApiError(
            409,
            "DefinedInFile",
            f"job {stored.job.name!r} is defined in {path}: edit the file to {verb} it "
            "(pause and resume work over the API)",
        )


def _parse(data: dict[str, Any], source: str) -> Job:
    job = parse_job(data, source)
    _refuse_unset_webhook_secrets(job)
    return job


def _refuse_unset_webhook_secrets(job: Job) -> None:
    """A webhook trigger whose `secret_env` is unset in jobwire's environment would refuse every
    delivery: refuse the definition instead (422), naming the trigger and the variable. (Job files
    still load with one — the variable may be set before a delivery comes — and `jobwire check`
    warns.)"""
    unset = unset_webhook_secrets(job)
    if not unset:
        return
    details = [
        ErrorDetail(
            path=f"triggers[{index}].secret_env",
            message=f"webhook trigger {trigger_id!r}: {unset_secret_text(variable)}",
        )
        for index, trigger_id, variable in unset
    ]
    _, first_id, first_var = unset[0]
    raise ApiError(
        422,
        "WebhookSecretUnset",
        f"job {job.name!r}: webhook trigger {first_id!r}: {unset_secret_text(first_var)}; "
        "or give the trigger its `secret` inline",
        details=details,
    )


@router.get("/jobs", response_model=JobList, dependencies=READ, summary="List jobs")
async def list_jobs(engine: EngineDep) -> JobList:
    return JobList(items=[job_out(s) for s in await engine.store.list_jobs()])


@router.post(
    "/jobs",
    response_model=JobOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=WRITE,
    summary="Create a job",
)
async def create_job(engine: EngineDep, body: JobBody) -> JobOut:
    """Accepts jobwire's job form or `{"name", "description", "schedule", "job": {"callback_url",
    "http_method", "payload"}}`. 409 if a job of that name exists (use PUT to replace it)."""
    job = _parse(body, "api")
    if await engine.store.get_job(job.name) is not None:
        raise ApiError(409, "Conflict", f"job {job.name!r} exists: PUT /api/v1/jobs/{job.name} replaces it")
    return job_out(await engine.put_job(job, origin="api"))


@router.get(
    "/jobs/{name}",
    response_model=JobOut | Seed003Job,
    dependencies=READ,
    summary="Get a job",
    responses={
        422: {
            "model": ErrorBody,
            "description": "`format=seed003` for a job seed 003's form cannot express: `details` "
            "names each setting it has no place for",
        }
    },
)
async def get_job(
    engine: EngineDep,
    name: str,
    format: Annotated[
        Literal["jobwire", "seed003"],
        Query(
            description="`seed003`: the job in seed 003's form (`name`, `description`, `schedule`, "
            "`job{callback_url, http_method, payload}`), which `POST`/`PUT /jobs` accept back as it is"
        ),
    ] = "jobwire",
) -> JobOut | Seed003Job:
    stored = await _get(engine, name)
    if format == "jobwire":
        return job_out(stored)
    seed = to_seed003(stored.job)
    if seed is None:
        obstacles = seed003_obstacles(stored.job)
        raise ApiError(
            422,
            "NotSeed003",
            f"job {name!r} cannot be shown in seed 003's form: it has settings that form has no place "
            "for (seed 003's form is one cron trigger `schedule` in UTC calling an http target with "
            "default settings and default policies); GET it without `format` for jobwire's form",
            details=[ErrorDetail(path=path, message=why) for path, why in obstacles],
        )
    seed["job"]["callback_url"] = mask_url(seed["job"]["callback_url"])
    return Seed003Job.model_validate(seed)


@router.put("/jobs/{name}", response_model=JobOut, dependencies=WRITE, summary="Create or replace a job")
async def replace_job(engine: EngineDep, name: str, body: JobBody, response: Response) -> JobOut:
    """The body replaces the whole definition; its `name` must match the path or be absent.
    `****` in place of a secret keeps the current secret. 201 when the job is new."""
    if body.get("name", name) != name:
        raise ApiError(
            422,
            "NameMismatch",
            f"the body names job {body.get('name')!r} but the path names {name!r}",
            details=[ErrorDetail(path="name", message=f"must be {name!r} or absent")],
        )
    current = await engine.store.get_job(name)
    if current is not None:
        _refuse_file_job(current, "change")
    data = unmask_job({**body, "name": name}, current.job if current else None)
    job = _parse(data, "api")
    stored = await engine.put_job(job, origin="api")
    response.status_code = status.HTTP_200_OK if current is not None else status.HTTP_201_CREATED
    return job_out(stored)


@router.patch("/jobs/{name}", response_model=JobOut, dependencies=WRITE, summary="Merge-patch a job")
async def patch_job(engine: EngineDep, name: str, body: JobBody) -> JobOut:
    """JSON merge patch (RFC 7396) onto the current definition, then validated as a whole:
    `{"triggers": [...]}` replaces the triggers, `{"target": {"timeout": "1m"}}` changes one field,
    `{"description": null}` resets a field to its default."""
    current = await _get(engine, name)
    _refuse_file_job(current, "change")
    if "name" in body and body["name"] != name:
        raise ApiError(
            422,
            "NameMismatch",
            "a job cannot be renamed: create the new job and delete this one",
            details=[ErrorDetail(path="name", message=f"must be {name!r} or absent")],
        )
    merged = merge_patch(current.job.model_dump(mode="json"), body)
    job = _parse(unmask_job(merged, current.job), "api")
    return job_out(await engine.put_job(job, origin="api"))


@router.delete(
    "/jobs/{name}", status_code=status.HTTP_204_NO_CONTENT, dependencies=WRITE, summary="Delete a job"
)
async def delete_job(engine: EngineDep, name: str) -> Response:
    """Its runs and events stay until retention removes them."""
    _refuse_file_job(await _get(engine, name), "delete")
    await engine.delete_job(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/jobs/{name}/pause", response_model=JobOut, dependencies=WRITE, summary="Pause a job")
async def pause_job(engine: EngineDep, name: str) -> JobOut:
    """Its triggers' events are recorded with outcome `paused` and make no runs until resumed."""
    return job_out(await engine.pause(name))


@router.post("/jobs/{name}/resume", response_model=JobOut, dependencies=WRITE, summary="Resume a job")
async def resume_job(engine: EngineDep, name: str) -> JobOut:
    return job_out(await engine.resume(name))


@router.post(
    "/jobs/{name}/runs",
    response_model=Run,
    status_code=status.HTTP_201_CREATED,
    dependencies=WRITE,
    summary="Trigger a run",
    responses={200: {"model": Run, "description": "A repeated Idempotency-Key: the run it made before"}},
)
async def trigger_run(
    engine: EngineDep,
    name: str,
    response: Response,
    params: Annotated[dict[str, Any] | None, Body(examples=[{"day": "2026-01-31"}])] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Run:
    """The body is the parameters object. With an `Idempotency-Key`, a repeat returns the run the
    first request made (200, header `Idempotency-Replayed: true`) instead of making another."""
    admission = await engine.trigger(name, params or {}, idempotency_key=idempotency_key)
    return await admission_response(engine, admission, response)


_WEBHOOK_DOC = (
    "Authenticated by its HMAC-SHA256 signature (the trigger's secret), not by a bearer token: "
    "`Jobwire-Signature: t=<unix seconds>,v1=<hex>` over `<Jobwire-Delivery>.<t>.<raw body>`; "
    "`Jobwire-Delivery` is a unique id per delivery (1-255 of `A-Za-z0-9_-:+/=`), and a repeated "
    "one is answered 409. The raw body is the event payload."
)


async def _webhook(
    engine: Engine, name: str, trigger_id: str | None, request: Request, response: Response
) -> Run:
    headers = {k.lower(): v for k, v in request.headers.items()}
    # Refuse an unsigned or unknown delivery before reading its body (a large body costs memory).
    checked = engine.webhook_precheck(name, trigger_id, headers)
    body = await request.body()
    admission = await engine.webhook(name, trigger_id, body, headers, checked)
    return await admission_response(engine, admission, response)


_WEBHOOK_BODY = {"requestBody": {"content": {"application/json": {"schema": {}}}, "required": False}}


@router.post(
    "/jobs/{name}/webhook",
    response_model=Run,
    status_code=status.HTTP_201_CREATED,
    summary="Webhook delivery (the job's webhook trigger)",
    description=_WEBHOOK_DOC,
    openapi_extra=_WEBHOOK_BODY,
)
async def webhook(engine: EngineDep, name: str, request: Request, response: Response) -> Run:
    return await _webhook(engine, name, None, request, response)


@router.post(
    "/jobs/{name}/webhook/{trigger_id}",
    response_model=Run,
    status_code=status.HTTP_201_CREATED,
    summary="Webhook delivery (one named webhook trigger)",
    description=_WEBHOOK_DOC,
    openapi_extra=_WEBHOOK_BODY,
)
async def webhook_trigger(
    engine: EngineDep, name: str, trigger_id: str, request: Request, response: Response
) -> Run:
    return await _webhook(engine, name, trigger_id, request, response)


__all__ = ["job_out", "router"]
