"""The hot path: `POST /api/v1/jobs/{name}/runs` answered without FastAPI's routing and validation.

Why: triggering a run is the request a producer sends thousands of times a second, and the
trigger → process-started budget (5 ms p99) leaves about a millisecond for HTTP. FastAPI's route
matching, dependency solving and response re-validation cost ~0.6 ms of CPU per request on a
2-core machine (py-spy), more than the engine's own work for the trigger.

This ASGI middleware answers the common case — a JSON object body (or none) and an optional
`Idempotency-Key` — with the same authentication, the same engine call, the same masking and the
same JSON as the FastAPI route `trigger_run`. Anything else (another content type, a body that is
not a JSON object, an over-long key) passes through untouched to that route, which validates it
and answers with its usual 422. The route also remains the endpoint's OpenAPI description.
"""

from __future__ import annotations

import json
import re
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobwire.api.auth import Authenticator
from jobwire.api.routes_runs import admission_parts
from jobwire.api.schemas import ApiError, ErrorDetail, error_body
from jobwire.engine import Engine, EngineError
from jobwire.model import Run
from jobwire.store import StoreError

log = structlog.get_logger("jobwire.api")

_PATH = re.compile(r"/api/v1/jobs/([^/]+)/runs")
_RUN_JSON = Run.__pydantic_serializer__.to_json
"""What `Run.model_dump_json` calls, returning bytes."""
_DECODE = json.JSONDecoder().decode
"""What `json.loads` decodes a text with (no hooks)."""


def loads(body: bytes) -> Any:
    """`json.loads(body)`. A body that starts with `{` and a non-zero byte is UTF-8 to `json.loads`
    (`json.detect_encoding`: no byte-order mark, no UTF-16/32 zeros), so it is decoded as that
    does, without the detection: ~1 µs of a trigger's ~2 µs of JSON."""
    if body[:1] == b"{" and (len(body) < 2 or body[1]):
        return _DECODE(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)

MAX_KEY = 255
"""Longest `Idempotency-Key` (as the route declares it); a longer one goes to the route's 422."""


def engine_error_json(exc: EngineError) -> tuple[int, dict[str, Any]]:
    """An engine error as (HTTP status, error body): one mapping for this path and the app's handler."""
    details: list[ErrorDetail] = []
    for d in getattr(exc, "details", None) or []:
        if isinstance(d, ErrorDetail):
            details.append(d)
        elif isinstance(d, dict) and "message" in d:
            details.append(ErrorDetail(path=str(d.get("path", "")), message=str(d["message"])))
    param = getattr(exc, "param", None)
    if param and not details:
        details.append(ErrorDetail(path=f"params.{param}", message=str(exc) or exc.reason))
    return exc.status, error_body(exc.status, exc.reason, str(exc) or exc.reason, details)


def invalid_json(doc: str | bytes, pos: int, msg: str) -> tuple[int, dict[str, Any]]:
    """The answer to a body that is not JSON: where it stops parsing (line and column, 1-based, as
    an editor shows them) and why. One text for this path and the app's handler."""
    text = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else doc
    where = json.JSONDecodeError(msg, text, pos)
    problem = f"not valid JSON at line {where.lineno}, column {where.colno}: {msg}"
    return 422, error_body(
        422, "InvalidJSON", f"request body is {problem}", [ErrorDetail(path="body", message=problem)]
    )


def too_deep() -> tuple[int, dict[str, Any]]:
    """The answer to a JSON body nested deeper than the parser can follow."""
    return 422, error_body(
        422,
        "ValidationError",
        "the JSON body is nested too deeply (jobwire accepts 64 levels)",
        [ErrorDetail(path="body", message="nested too deeply")],
    )


def _is_json(content_type: bytes) -> bool:
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


def takes(headers: dict[bytes, bytes]) -> bool:
    """Whether this path answers a trigger with these (lower-case, first-wins) headers: a JSON
    content type or none, and an `Idempotency-Key` the route would accept. Else the route does."""
    ctype = headers.get(b"content-type")
    key = headers.get(b"idempotency-key")
    return (ctype is None or _is_json(ctype)) and (key is None or len(key.decode("latin-1")) <= MAX_KEY)


Answer = tuple[int, bytes, dict[str, str] | None]
"""(status, JSON body, extra headers) of a trigger answered here."""


def json_answer(status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
    return status, json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode(), headers


async def answer(
    engine: Engine,
    auth: Authenticator,
    job: str,
    headers: dict[bytes, bytes],
    body: bytes,
    yield_to_launch: bool = True,
) -> Answer | None:
    """The answer to `POST /api/v1/jobs/{job}/runs` with this body, for headers `takes` accepted;
    None when the route must answer it (a body that is not UTF-8, or JSON that is not an object).
    `yield_to_launch`: see `EventIntake.submit`."""
    try:
        params: Any = loads(body) if body.strip() else None
    except json.JSONDecodeError as exc:
        return json_answer(*invalid_json(exc.doc, exc.pos, exc.msg))
    except ValueError:  # not UTF-8: the route answers it
        return None
    except RecursionError:  # json.loads on 100,000 nested brackets
        return json_answer(*too_deep())
    if params is not None and not isinstance(params, dict):
        return None
    key_raw = headers.get(b"idempotency-key")
    key = key_raw.decode("latin-1") if key_raw is not None else None
    try:
        auth.check_header(headers.get(b"authorization"), "write")
        admission = await engine.trigger(
            job, params or {}, idempotency_key=key, yield_to_launch=yield_to_launch
        )
        status, extra, run = admission_parts(engine, admission)
        # the serializer's bytes as they are: `model_dump_json` decodes them to a str (then encoded back)
        return status, _RUN_JSON(run, by_alias=True), extra
    except ApiError as exc:
        return json_answer(exc.status, exc.body(), exc.headers)
    except EngineError as exc:
        return json_answer(*engine_error_json(exc))
    except StoreError as exc:
        log.error("store error", error=str(exc))
        return json_answer(503, error_body(503, "StoreUnavailable", str(exc) or "the store is unavailable"))


class TriggerFastPath:
    def __init__(self, app: ASGIApp, engine: Engine, auth: Authenticator) -> None:
        self.app = app
        self.engine = engine
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        if not takes(headers):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        result = await answer(self.engine, self.auth, match.group(1), headers, body)
        if result is None:
            return await self.app(scope, _replay(body, receive), send)
        await _send(send, *result)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the route the body this middleware has already read."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

