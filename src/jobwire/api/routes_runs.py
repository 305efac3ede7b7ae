"""/runs: list, show (params masked), log (streamed, optionally followed), cancel, rerun, callback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from jobwire.api.auth import READ, WRITE, EngineDep, callback_bearer
from jobwire.api.schemas import ERROR_RESPONSES, MASK, ApiError, CallbackIn, ErrorDetail, RunPage
from jobwire.engine import Engine, EngineError
from jobwire.model import Admission, EventOutcome, Run, RunState
from jobwire.params import mask_params
from jobwire.store import RunQuery

router = APIRouter(tags=["runs"], responses=ERROR_RESPONSES)

MAX_LIMIT = 500


def aware(value: datetime | None) -> datetime | None:
    """Query times without a zone are taken as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def mask_run(engine: Engine, run: Run) -> Run:
    """The run with its secret parameters masked (every parameter, if its job is gone)."""
    if not run.params:
        return run
    stored = engine.jobs.get(run.job)  # in memory: a store read would queue behind writes
    params = {k: MASK for k in run.params} if stored is None else mask_params(stored.job, run.params)
    return run.model_copy(update={"params": params})


async def masked_run(engine: Engine, run: Run) -> Run:
    return mask_run(engine, run)


def admission_parts(engine: Engine, admission: Admission) -> tuple[int, dict[str, str], Run]:
    """(status, headers, masked run) of a trigger's answer: 201 with the new run; 200 +
    `Idempotency-Replayed: true` with the run a repeat key made before; raises a 409 naming the
    outcome when the event made no run (paused, overlap, ...), 422 when it was invalid."""
    run = admission.run
    if run is None:
        event = admission.event
        invalid = event.outcome == EventOutcome.invalid
        raise ApiError(
            422 if invalid else 409,
            "InvalidParameters" if invalid else event.outcome.value.capitalize(),
            f"event {event.id} made no run ({event.outcome.value}): {event.reason or 'no reason recorded'}",
            details=[ErrorDetail(path="event_id", message=event.id)],
        )
    if admission.created:
        return status.HTTP_201_CREATED, {}, mask_run(engine, run)
    return status.HTTP_200_OK, {"Idempotency-Replayed": "true"}, mask_run(engine, run)


async def admission_response(engine: Engine, admission: Admission, response: Response) -> Run:
    code, headers, run = admission_parts(engine, admission)
    response.status_code = code
    response.headers.update(headers)
    return run


def parse_states(values: list[str] | None) -> list[RunState] | None:
    """`state` is repeatable and may also be comma-separated: `?state=failed&state=timed_out`."""
    if not values:
        return None
    out: list[RunState] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            try:
                out.append(RunState(part))
            except ValueError:
                raise ApiError(
                    422,
                    "ValidationError",
                    f"unknown run state {part!r}",
                    details=[
                        ErrorDetail(
                            path="query.state",
                            message=f"expected one of {', '.join(s.value for s in RunState)}",
                        )
                    ],
                ) from None
    return out or None


def bad_cursor(exc: ValueError) -> ApiError:
    return ApiError(
        422,
        "ValidationError",
        f"invalid cursor: {exc}",
        details=[ErrorDetail(path="query.cursor", message="pass back a next_cursor from a previous page")],
    )


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, at most {MAX_LIMIT}")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]


@router.get("/runs", response_model=RunPage, dependencies=READ, summary="List runs, newest first")
async def list_runs(
    engine: EngineDep,
    job: str | None = None,
    state: Annotated[list[str] | None, Query(description="repeatable, or comma-separated")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_id: str | None = None,
    trigger: Annotated[str | None, Query(description="a trigger id of the job: `cron`, `api`, ...")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> RunPage:
    query = RunQuery(
        job=job,
        states=parse_states(state),
        since=aware(since),
        until=aware(until),
        event_id=event_id,
        trigger=trigger,
        limit=limit,
        cursor=cursor,
    )
    try:
        page = await engine.store.list_runs(query)
    except ValueError as exc:
        raise bad_cursor(exc) from exc
    return RunPage(items=[await masked_run(engine, r) for r in page.items], next_cursor=page.next_cursor)


async def _get_run(engine: Engine, run_id: str) -> Run:
    """The engine's view first: an active run there is newer than the store's copy."""
    return await engine.get_run(run_id)


@router.get("/runs/{run_id}", response_model=Run, dependencies=READ, summary="Get a run")
async def get_run(engine: EngineDep, run_id: str) -> Run:
    """State history with timestamps, event, attempts, exit code or HTTP status, error."""
    return await masked_run(engine, await _get_run(engine, run_id))


FIRST_CHUNK_WAIT = 0.5
"""How long the log endpoint waits for the first bytes before sending headers: long enough to
answer a bad run id with a 404 body, short enough that `follow` on a quiet run starts at once."""


@router.get(
    "/runs/{run_id}/log",
    dependencies=READ,
    summary="The run's log",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "The log, streamed"}},
)
async def get_log(
    engine: EngineDep,
    run_id: str,
    follow: Annotated[bool, Query(description="keep streaming until the run ends")] = False,
) -> StreamingResponse:
    await _get_run(engine, run_id)
    chunks = engine.run_log(run_id, follow=follow)
    first: asyncio.Future[bytes] = asyncio.ensure_future(anext(chunks))
    await asyncio.wait({first}, timeout=FIRST_CHUNK_WAIT)
    if first.done() and not first.cancelled() and isinstance(first.exception(), EngineError):
        raise first.exception()  # type: ignore[misc]

    async def body() -> AsyncIterator[bytes]:
        try:
            try:
                yield await first
            except StopAsyncIteration:
                return
            async for chunk in chunks:
                yield chunk
        finally:
            if not first.done():
                first.cancel()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    return StreamingResponse(
        body(),
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/runs/{run_id}/cancel", response_model=Run, dependencies=WRITE, summary="Cancel a run")
async def cancel_run(engine: EngineDep, run_id: str) -> Run:
    return await masked_run(engine, await engine.cancel(run_id))


@router.post(
    "/runs/{run_id}/rerun",
    response_model=Run,
    status_code=status.HTTP_201_CREATED,
    dependencies=WRITE,
    summary="Run again with the same parameters",
    responses={200: {"model": Run, "description": "A repeated Idempotency-Key: the run it made before"}},
)
async def rerun(
    engine: EngineDep,
    run_id: str,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Run:
    admission = await engine.rerun(run_id, idempotency_key=idempotency_key)
    return await admission_response(engine, admission, response)


@router.post(
    "/runs/{run_id}/callback",
    response_model=Run,
    summary="A job reports its end",
    description="Authenticated by the run's own callback token (`Authorization: Bearer <token>`), "
    "not by an API token. 409 if the run has already finished.",
)
async def callback(
    engine: EngineDep,
    run_id: str,
    body: CallbackIn,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(callback_bearer)],
) -> Run:
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "Unauthorized",
            "a callback needs `Authorization: Bearer <the run's callback token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    data: dict[str, Any] = body.data or {}
    run = await engine.callback(run_id, credentials.credentials, body.ok, body.message, data)
    return await masked_run(engine, run)
