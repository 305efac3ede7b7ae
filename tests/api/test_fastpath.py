"""The trigger fast path (`api/fastpath.py`) answers exactly as the FastAPI route it shortcuts.

Every request below is sent to two apps over the same fake engine: the real one (fast path in
front) and one with the fast path removed, so the FastAPI route `trigger_run` answers. Status,
body and the headers a client reads must be the same. A second test drives the middleware on its
own to show which requests it answers and which it hands on untouched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from jobwire.api import create_app
from jobwire.api.auth import Authenticator
from jobwire.api.fastpath import TriggerFastPath
from tests.api.test_api_schema import V1, FakeEngine, add_job, settings


def _apps(eng_settings: dict[str, Any]) -> tuple[FakeEngine, FakeEngine, Any, Any]:
    fast_engine, route_engine = FakeEngine(settings(**eng_settings)), FakeEngine(settings(**eng_settings))
    for eng in (fast_engine, route_engine):
        add_job(eng)
    fast = create_app(fast_engine)
    plain = create_app(route_engine)
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not TriggerFastPath]
    assert len(plain.user_middleware) == len(fast.user_middleware) - 1
    return fast_engine, route_engine, fast, plain


@pytest.fixture(params=[{}, {"api_tokens": "w-token:read,write;r-token:read"}], ids=["open", "tokens"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, TestClient, FakeEngine, FakeEngine]]:
    fast_engine, route_engine, fast, plain = _apps(request.param)
    with TestClient(fast) as a, TestClient(plain) as b:
        yield a, b, fast_engine, route_engine


W = {"Authorization": "Bearer w-token"}
CASES: list[tuple[str, dict[str, Any]]] = [
    ("json body", {"json": {"who": "bob", "password": "hunter2"}, "headers": W}),
    ("no body", {"headers": W}),
    ("null body", {"content": b"null", "headers": {**W, "content-type": "application/json"}}),
    ("idempotency key", {"json": {}, "headers": {**W, "Idempotency-Key": "k1"}}),
    ("same key again", {"json": {}, "headers": {**W, "Idempotency-Key": "k1"}}),
    ("unknown parameter", {"json": {"colour": "red"}, "headers": W}),
    ("unknown job", {"json": {}, "headers": W, "path": "/jobs/ghost/runs"}),
    ("json with charset", {"content": b"{}", "headers": {**W, "content-type": "application/json; charset=utf-8"}}),
    ("a list, not an object", {"json": [1, 2], "headers": W}),
    ("invalid json", {"content": b"{nope", "headers": {**W, "content-type": "application/json"}}),
    ("form content type", {"content": b"who=bob", "headers": {**W, "content-type": "application/x-www-form-urlencoded"}}),
    ("key too long", {"json": {}, "headers": {**W, "Idempotency-Key": "k" * 256}}),
    ("no token", {"json": {}}),
    ("read-only token", {"json": {}, "headers": {"Authorization": "Bearer r-token"}}),
    ("not a bearer token", {"json": {}, "headers": {"Authorization": "Basic dTpw"}}),
    ("unknown token", {"json": {}, "headers": {"Authorization": "Bearer nope"}}),
]  # fmt: skip


def test_fast_path_answers_as_the_route_does(pair: tuple[TestClient, TestClient, FakeEngine, FakeEngine]) -> None:
    fast, plain, fast_engine, route_engine = pair
    for name, case in CASES:
        kw = dict(case)
        path = V1 + kw.pop("path", "/jobs/hello/runs")
        a, b = fast.post(path, **kw), plain.post(path, **kw)
        assert (a.status_code, a.json()) == (b.status_code, b.json()), name
        for header in ("content-type", "idempotency-replayed", "www-authenticate"):
            assert a.headers.get(header) == b.headers.get(header), (name, header)
    # both apps made the same calls on their engines, in the same order
    assert fast_engine.calls == route_engine.calls
    assert len(fast_engine.fake.runs) == len(route_engine.fake.runs) >= 3


def test_bad_json_names_line_and_column_on_both_paths(
    pair: tuple[TestClient, TestClient, FakeEngine, FakeEngine],
) -> None:
    fast, plain, _, _ = pair
    ctype = {**W, "content-type": "application/json"}
    body = b'{"who": "bob", ]'  # what is wrong is at offset 15: line 1, column 16
    for client in (fast, plain):
        for path in ("/jobs/hello/runs", "/jobs", "/jobs/hello"):
            r = (client.put if path == "/jobs/hello" else client.post)(V1 + path, content=body, headers=ctype)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["message"] == (
                "request body is not valid JSON at line 1, column 16: "
                "Expecting property name enclosed in double quotes"
            ), (path, err)
            assert err["reason"] == "InvalidJSON"
            assert err["details"] == [{"path": "body", "message": err["message"].removeprefix("request body is ")}]
        r = client.post(V1 + "/jobs/hello/runs", content=b'{\n  "who": "bob"\n  "times": 2}', headers=ctype)
        assert "at line 3, column 3: Expecting ',' delimiter" in r.json()["error"]["message"], r.text
        assert "JSON decode error" not in r.text


def test_the_run_it_returns_is_the_run_the_api_shows() -> None:
    _, _, fast, _ = _apps({})
    with TestClient(fast) as c:
        r = c.post(V1 + "/jobs/hello/runs", json={"who": "ada", "password": "pw"})
        assert r.status_code == 201
        assert r.json() == c.get(V1 + f"/runs/{r.json()['id']}").json()
        assert r.json()["params"]["password"] == "****"
        assert "pw" not in r.text.replace("password", "")


# --------------------------------------------------------------------------- the middleware alone


class Downstream:
    """The app behind the middleware: records what reached it and answers 418."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.seen.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(app: Any, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]  # the body in two messages
    sent: list[Message] = []

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(msg: Message) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_middleware_answers_json_and_hands_on_the_rest() -> None:
    eng = FakeEngine(settings())
    add_job(eng)
    down = Downstream()
    app = TriggerFastPath(down, eng, Authenticator([], open_access=True))  # type: ignore[arg-type]
    ctype = [(b"content-type", b"application/json")]

    assert await _call(app, "POST", "/api/v1/jobs/hello/runs", b'{"who": "x"}', ctype) == 201
    assert await _call(app, "POST", "/api/v1/jobs/hello/runs", b"", []) == 201
    assert down.seen == [] and len(eng.fake.runs) == 2

    handed = [
        ("GET", "/api/v1/jobs/hello/runs", b"", ctype),
        ("POST", "/api/v1/jobs/hello/runs/x", b"{}", ctype),
        ("POST", "/api/v1/jobs/hello/webhook", b"{}", ctype),
        ("POST", "/api/v1/jobs/hello/runs", b"[1]", ctype),
        ("POST", "/api/v1/jobs/hello/runs", b"who=x", [(b"content-type", b"text/plain")]),
    ]
    for method, path, body, headers in handed:
        assert await _call(app, method, path, body, headers) == 418
    # what it read, it hands on whole
    assert [b for _, b in down.seen] == [b"", b"{}", b"{}", b"[1]", b"who=x"]
    # a body that is not JSON is answered here, in the route's words (see the parity test)
    assert await _call(app, "POST", "/api/v1/jobs/hello/runs", b"{bad", ctype) == 422
    assert len(down.seen) == 5 and len(eng.fake.runs) == 2


def test_concurrent_triggers_through_the_fast_path() -> None:
    fast_engine, _, fast, _ = _apps({})

    async def main() -> list[int]:
        import httpx

        transport = httpx.ASGITransport(app=fast)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(
                *(c.post(V1 + "/jobs/hello/runs", json={"who": f"w{i}"}) for i in range(50))
            )
        return [r.status_code for r in rs]

    assert asyncio.run(main()) == [201] * 50
    assert sorted(json.dumps(r.params["who"]) for r in fast_engine.fake.runs.values()) == sorted(
        json.dumps(f"w{i}") for i in range(50)
    )
