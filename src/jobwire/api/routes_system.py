"""Health, readiness, Prometheus metrics and the live status stream (Server-Sent Events)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobwire.api.auth import READ, EngineDep
from jobwire.api.schemas import ERROR_RESPONSES, Health, Readiness
from jobwire.api.sse import EventStream, open_subscription, status_frames

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, summary="Liveness: 200 while the process serves")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: 200 once the engine is started and can take work, else 503 with the reasons",
    responses={
        503: {
            "model": Readiness,
            "description": "Starting, stopping, a critical task failing, or store writes failing",
        }
    },
)
async def readyz(engine: EngineDep) -> Any:
    report = engine.health()
    body = Readiness(
        status="ready" if report["ready"] else "not ready",
        problems=report["problems"],
        tasks=report["tasks"],
        store=report["store"] or None,
        sources=report.get("sources") or [],
        launch_backlog=report.get("launch_backlog") or {},
        replica=report.get("replica"),
    )
    if report["ready"]:
        return body
    return JSONResponse(body.model_dump(mode="json"), status_code=503)


@router.get(
    "/metrics",
    dependencies=READ,
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **ERROR_RESPONSES},
)
async def metrics(engine: EngineDep) -> Response:
    await engine.refresh_metrics()
    return Response(generate_latest(engine.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/stream",
    dependencies=READ,
    summary="Live status (Server-Sent Events), resumable with Last-Event-ID",
    response_class=EventStream,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: status`, `id: <sequence number>`, `data: <StatusDocument JSON>`; "
            "`event: lagged` with `data: {missed, first, last, reason}` when documents were dropped "
            "before this client got them; a comment line every 15 s. Reconnect with "
            "`Last-Event-ID: <id>` to resume after that document.",
        },
        **ERROR_RESPONSES,
    },
)
async def stream(
    engine: EngineDep,
    request: Request,
    job: Annotated[str | None, Query(description="only this job's runs")] = None,
    last_event_id: Annotated[
        str | None,
        Header(description="resume after this sequence number (sent by EventSource on reconnect)"),
    ] = None,
) -> EventStream:
    heartbeat = float(getattr(request.app.state, "heartbeat", 15.0))
    sub, notice = open_subscription(engine.hub, last_event_id)
    metrics = engine.metrics
    return EventStream(
        status_frames(sub, job, heartbeat, notice),
        stall_timeout=engine.settings.stream_stall_timeout.total_seconds(),
        on_stall=metrics.stream_stalled.inc,
    )
