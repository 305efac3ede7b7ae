"""The HTTP face of a runner of the fleet (`jobwire serve --role runner`): no API of its own — a
runner has no store — only the probes and the scrape: `/healthz`, `/readyz` (connected to RabbitMQ,
its loops healthy, how many of its slots are busy) and `/metrics` (slots, busy, runs by state,
redeliveries taken over; the targets' own metrics)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jobwire.api.auth import READ, Authenticator
from jobwire.engine.runner import Runner


def _runner(request: Request) -> Runner:
    runner = request.app.state.runner
    assert isinstance(runner, Runner)
    return runner


def create_runner_app(runner: Runner) -> FastAPI:
    app = FastAPI(title="jobwire runner", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runner = runner
    app.state.auth = Authenticator.from_settings(runner.settings)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> Any:
        report = _runner(request).health()
        body = {"status": "ready" if report["ready"] else "not ready", **report}
        return JSONResponse(body, status_code=200 if report["ready"] else 503)

    @app.get("/metrics", dependencies=READ)
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(_runner(request).registry), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["create_runner_app"]
