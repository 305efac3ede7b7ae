"""/events: every recorded event, and its lineage (the runs it made, or why it made none)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from jobwire.api.auth import READ, EngineDep
from jobwire.api.routes_runs import Cursor, Limit, aware, bad_cursor, masked_run
from jobwire.api.schemas import ERROR_RESPONSES, ApiError, ErrorDetail, EventPage, Lineage
from jobwire.model import EventOutcome, Run
from jobwire.store import EventQuery, RunQuery

router = APIRouter(tags=["events"], responses=ERROR_RESPONSES)

_WHY = {
    EventOutcome.duplicate: "its run key already had a run (see run_id)",
    EventOutcome.overlap: "skipped by the job's concurrency policy",
    EventOutcome.filtered: "the trigger's filter did not match",
    EventOutcome.invalid: "its payload or parameters were invalid",
    EventOutcome.paused: "the job was paused",
}


def parse_outcomes(values: list[str] | None) -> list[EventOutcome] | None:
    if not values:
        return None
    out: list[EventOutcome] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            try:
                out.append(EventOutcome(part))
            except ValueError:
                raise ApiError(
                    422,
                    "ValidationError",
                    f"unknown event outcome {part!r}",
                    details=[
                        ErrorDetail(
                            path="query.outcome",
                            message=f"expected one of {', '.join(o.value for o in EventOutcome)}",
                        )
                    ],
                ) from None
    return out or None


@router.get("/events", response_model=EventPage, dependencies=READ, summary="List events, newest first")
async def list_events(
    engine: EngineDep,
    job: str | None = None,
    outcome: Annotated[list[str] | None, Query(description="repeatable, or comma-separated")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> EventPage:
    query = EventQuery(
        job=job,
        outcomes=parse_outcomes(outcome),
        since=aware(since),
        until=aware(until),
        limit=limit,
        cursor=cursor,
    )
    try:
        page = await engine.store.list_events(query)
    except ValueError as exc:
        raise bad_cursor(exc) from exc
    return EventPage(items=page.items, next_cursor=page.next_cursor)


@router.get("/events/{event_id}", response_model=Lineage, dependencies=READ, summary="An event and its runs")
async def get_event(engine: EngineDep, event_id: str) -> Lineage:
    event = await engine.store.get_event(event_id)
    if event is None:
        raise ApiError(404, "EventNotFound", f"no event with id {event_id!r}")
    runs: list[Run] = []
    page = await engine.store.list_runs(RunQuery(event_id=event.id, limit=100))
    runs.extend(page.items)
    if event.run_id and all(r.id != event.run_id for r in runs):
        existing = await engine.store.get_run(event.run_id)
        if existing is not None:
            runs.append(existing)
    reason = None
    if event.outcome != EventOutcome.run:
        reason = event.reason or _WHY.get(event.outcome, event.outcome.value)
    return Lineage(event=event, runs=[await masked_run(engine, r) for r in runs], reason=reason)
