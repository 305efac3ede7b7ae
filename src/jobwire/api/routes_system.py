"""Health, readiness, Prometheus metrics and the live status stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobwire.api.auth import READ, EngineDep
from jobwire.api.schemas import ERROR_RESPONSES, Health, Readiness
from jobwire.engine import Engine
from jobwire.model import StatusDocument

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
    return Response(generate_latest(engine.registry), media_type=CONTENT_TYPE_LATEST)


def sse(doc: StatusDocument, seq: int) -> bytes:
    return f"event: status\nid: {doc.run_id}:{seq}\ndata: {doc.model_dump_json()}\n\n".encode()


async def status_stream(engine: Engine, job: str | None, heartbeat: float) -> AsyncGenerator[bytes, None]:
    """Every status document from now on, as SSE; a comment line every `heartbeat` seconds keeps
    proxies and clients from timing the connection out. `id` is `<run_id>:<n>`, n counting the
    documents of that run on this connection. The first line, `: connected`, is sent once the
    subscription is in place: a client that waits for it before triggering misses nothing."""
    docs = engine.subscribe()
    seqs: dict[str, int] = {}
    nxt: asyncio.Future[StatusDocument] | None = asyncio.ensure_future(anext(docs))
    try:
        yield b": connected\nretry: 2000\n\n"
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(anext(docs))
            done, _ = await asyncio.wait({nxt}, timeout=heartbeat)
            if not done:
                yield b": heartbeat\n\n"
                continue
            try:
                doc = nxt.result()
            except StopAsyncIteration:
                return
            finally:
                nxt = None
            if job is not None and doc.job != job:
                continue
            seqs[doc.run_id] = seqs.get(doc.run_id, 0) + 1
            if len(seqs) > 10_000:  # a long-lived connection must not grow without bound
                seqs.clear()
                seqs[doc.run_id] = 1
            yield sse(doc, seqs[doc.run_id])
    finally:
        if nxt is not None and not nxt.done():
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
        aclose = getattr(docs, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


@router.get(
    "/stream",
    dependencies=READ,
    summary="Live status (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: status`, `id: <run_id>:<n>`, `data: <StatusDocument JSON>`; "
            "a comment line every 15 s",
        },
        **ERROR_RESPONSES,
    },
)
async def stream(
    engine: EngineDep,
    request: Request,
    job: Annotated[str | None, Query(description="only this job's runs")] = None,
) -> StreamingResponse:
    heartbeat = float(getattr(request.app.state, "heartbeat", 15.0))
    return StreamingResponse(
        status_stream(engine, job, heartbeat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
