"""The FastAPI application: routers under /api/v1, one error shape, bearer-token auth.

`create_app(engine)` does not start or stop the engine — whoever made the engine owns its
lifetime (`jobwire serve` starts it before uvicorn serves and stops it after).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobwire.api import (
    routes_dashboard,
    routes_events,
    routes_jobs,
    routes_runs,
    routes_seed002,
    routes_system,
    routes_views,
)
from jobwire.api.auth import READ, Authenticator
from jobwire.api.fastpath import TriggerFastPath, engine_error_json, invalid_json, too_deep
from jobwire.api.limits import BodyLimit
from jobwire.api.schemas import ApiError, ErrorDetail, error_body
from jobwire.engine import Engine, EngineError
from jobwire.jobfile import JobFileError
from jobwire.store import StoreError

PREFIX = "/api/v1"
STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_PATH = "/static/swagger"
SWAGGER_UI_VERSION = "5.35.0"
"""The vendored swagger-ui-dist (static/swagger/README.md)."""
log = structlog.get_logger("jobwire.api")

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "ValidationError",
    429: "TooManyRequests",
}


def _version() -> str:
    try:
        return version("jobwire")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def loc_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """("body", "job", "callback_url") → "job.callback_url"; ("query", "limit") → "query.limit";
    list indices as `[i]`: "triggers[0].cron"."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


def _json(
    status: int,
    reason: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, reason, message, details), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _json(exc.status, exc.reason, exc.message, exc.details, exc.headers)

    async def engine_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        code, body = engine_error_json(exc)
        return JSONResponse(body, status_code=code)

    async def job_file_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JobFileError)
        details = [
            ErrorDetail(path=str(e.path or ""), message=str(e.message), line=e.line or None)
            for e in getattr(exc, "errors", [])
        ]
        first = f": {details[0].path}: {details[0].message}" if details else ""
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        return _json(422, "InvalidJob", f"the job definition is invalid{first}{more}", details)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":  # FastAPI's "JSON decode error"
            e = errors[0]
            loc = tuple(e.get("loc", ()))
            pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
            msg = str((e.get("ctx") or {}).get("error") or "JSON decode error")
            doc = exc.body if isinstance(exc.body, str | bytes) else ""
            code, body = invalid_json(doc, pos, msg)
            return JSONResponse(body, status_code=code)
        details = [
            ErrorDetail(path=loc_path(tuple(e.get("loc", ()))), message=str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        first = f": {details[0].path}: {details[0].message}" if details else ""
        return _json(422, "ValidationError", f"invalid request{first}", details)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        reason = _REASONS.get(exc.status_code, "Error")
        message = exc.detail if isinstance(exc.detail, str) else reason
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint (the API is under /api/v1; see /docs)"
        return _json(exc.status_code, reason, message, headers=getattr(exc, "headers", None))

    async def store_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("store error", error=str(exc))
        return _json(503, "StoreUnavailable", str(exc) or "the store is unavailable")

    async def recursion_error(_: Request, exc: Exception) -> JSONResponse:
        code, body = too_deep()  # a JSON body nested past what the parser follows
        return JSONResponse(body, status_code=code)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in request", error_type=type(exc).__name__)
        return _json(500, "InternalError", "internal error (see the jobwire log)")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(EngineError, engine_error)
    app.add_exception_handler(JobFileError, job_file_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(RecursionError, recursion_error)
    app.add_exception_handler(Exception, unexpected)


def create_app(engine: Engine, *, heartbeat: float = 15.0) -> FastAPI:
    """The API for `engine`. Raises `BindRefusedError` when `engine.settings.host` is not loopback and no
    API token is configured. `heartbeat`: seconds between SSE comment lines on /stream."""
    auth = Authenticator.from_settings(engine.settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield  # the engine belongs to the caller

    app = FastAPI(
        title="jobwire",
        version=_version(),
        description=(
            "Event-driven job scheduler. Authenticate with `Authorization: Bearer <token>` "
            "(scope `read` for GET, `write` for the rest). Every error is "
            '`{"error": {"message", "reason", "code", "details": [{"path", "message"}]}}`.'
        ),
        docs_url=None,  # served below from the package's own copy of Swagger UI, not a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.auth = auth
    app.state.heartbeat = heartbeat
    _install_error_handlers(app)
    app.add_middleware(TriggerFastPath, engine=engine, auth=auth)
    app.add_middleware(BodyLimit, max_bytes=engine.settings.max_body_bytes)  # outermost: added last

    for module in (routes_jobs, routes_runs, routes_events, routes_system, routes_seed002, routes_views):
        app.include_router(module.router, prefix=PREFIX)

    # Conventional unprefixed paths for probes and scrapers (not repeated in the schema).
    app.add_api_route("/healthz", routes_system.healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", routes_system.readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        "/metrics",
        routes_system.metrics,
        methods=["GET"],
        include_in_schema=False,
        dependencies=READ,
    )

    routes_dashboard.install(app)  # the web dashboard at `/` (api/static/dashboard/)

    # Swagger UI from the package (static/swagger/, swagger-ui-dist SWAGGER_UI_VERSION): /docs works
    # offline and loads nothing from elsewhere. Open like /openapi.json: it holds no secret.
    app.mount(SWAGGER_PATH, StaticFiles(directory=STATIC / "swagger"), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{SWAGGER_PATH}/swagger-ui-bundle.js?v={SWAGGER_UI_VERSION}",
            swagger_css_url=f"{SWAGGER_PATH}/swagger-ui.css?v={SWAGGER_UI_VERSION}",
            swagger_favicon_url=f"{SWAGGER_PATH}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )

    return app


__all__ = ["PREFIX", "create_app"]
