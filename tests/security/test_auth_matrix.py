"""The auth matrix over every route of the OpenAPI document, against `jobwire serve` (issue 7).

Every operation in `/openapi.json` (plus the unprefixed probes and `/metrics`) is called with no
token, a wrong token, a read token and a write token. GET needs `read`, everything else `write`,
except the explicit OPEN list below — so a new route is covered the day it is added, and cannot be
open by accident: an unclassified open route fails the "no token → 401" row.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import Server

WRITE = "write-token-7f3a9c1e5b"
READ = "read-token-2d8e4f6a0c"
JOBS = """
jobs:
  - name: ok
    triggers: [{webhook: {secret_env: MATRIX_HOOK_SECRET, id: gh}}]
    target: {type: local, command: ["true"]}
"""

OPEN = {
    # authenticated otherwise: the delivery's HMAC signature, the run's own callback token
    ("POST", "/api/v1/jobs/{name}/webhook"): "hmac",
    ("POST", "/api/v1/jobs/{name}/webhook/{trigger_id}"): "hmac",
    ("POST", "/api/v1/runs/{run_id}/callback"): "callback token",
    ("POST", "/api/v1/seed002/callback/{name}"): "callback token",
    # probes: no secrets, needed by load balancers and orchestrators
    ("GET", "/api/v1/healthz"): "probe",
    ("GET", "/api/v1/readyz"): "probe",
}
UNPREFIXED = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): "read",
    # the API's own description: public by design, holds no secret (test_canaries searches it)
    ("GET", "/openapi.json"): None,
    ("GET", "/docs"): None,
    # Swagger UI's assets, served from the package so /docs works offline: public code, no secret
    ("GET", "/static/swagger/swagger-ui-bundle.js"): None,
    ("GET", "/static/swagger/swagger-ui.css"): None,
    ("GET", "/static/swagger/favicon-32x32.png"): None,
    # the dashboard's page and code (static/dashboard/): public, no secret; its data comes from the API
    ("GET", "/"): None,
    ("GET", "/static/dashboard/app.css"): None,
    ("GET", "/static/dashboard/js/main.js"): None,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("matrix")
    jobs = tmp / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(
        tmp / "data", jobs, JOBWIRE_API_TOKENS=f"{WRITE}:read,write;{READ}:read", MATRIX_HOOK_SECRET="s"
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ids(server: Server) -> dict[str, str]:
    with server.client(WRITE) as c:
        r = c.post("/jobs/ok/runs", json={})
        assert r.status_code == 201, r.text
        run = r.json()
    return {"name": "ok", "run_id": run["id"], "event_id": run["event_id"], "trigger_id": "gh"}


def operations(server: Server, ids: dict[str, str]) -> list[tuple[str, str, str, str | None]]:
    """(method, template, url path, scope or None when open) for every documented operation."""
    doc = httpx.get(server.url + "/openapi.json").json()
    out: list[tuple[str, str, str, str | None]] = []
    for template, ops in doc["paths"].items():
        for method in ops:
            m = method.upper()
            path = template
            for key, value in ids.items():
                path = path.replace("{" + key + "}", value)
            assert "{" not in path, f"{m} {template}: a path parameter the matrix cannot fill"
            scope = None if (m, template) in OPEN else ("read" if m == "GET" else "write")
            out.append((m, template, path, scope))
    out += [(m, t, t, s) for (m, t), s in UNPREFIXED.items()]
    return out


def call(server: Server, method: str, path: str, auth: str | None) -> int:
    """The status of one request; the body is valid where one is needed (callback: `{"ok": true}`),
    so what answers is the authentication, not validation."""
    headers = {"content-type": "application/json"}
    body = b'{"ok": true}' if path.endswith("/callback") else b"{}"
    if auth is not None:
        headers["authorization"] = auth
    with (
        httpx.Client(base_url=server.url, timeout=10) as c,
        c.stream(method, path, headers=headers, content=body) as r,
    ):
        return r.status_code  # the stream is closed unread: /stream never ends


def test_every_route_in_the_document_is_classified(server: Server, ids: dict[str, str]) -> None:
    ops = operations(server, ids)
    assert len(ops) >= 20
    documented = {(m, t) for m, t, _, _ in ops}
    assert set(OPEN) <= documented, f"OPEN names routes that no longer exist: {set(OPEN) - documented}"


def test_the_matrix(server: Server, ids: dict[str, str]) -> None:
    problems: list[str] = []
    for method, template, path, scope in operations(server, ids):
        row = f"{method} {template}"
        none = call(server, method, path, None)
        wrong = call(server, method, path, "Bearer not-a-token")
        read = call(server, method, path, f"Bearer {READ}")
        write = call(server, method, path, f"Bearer {WRITE}")
        if scope is None:
            if OPEN.get((method, template)) in ("hmac", "callback token"):
                # open to bearer tokens, closed to anyone without the delivery's own credential
                for label, code in (("no token", none), ("wrong", wrong), ("read", read), ("write", write)):
                    if code not in (401, 403):
                        problems.append(f"{row} [{label}]: {code}, expected 401/403 without its credential")
            elif none != 200:
                problems.append(f"{row} [no token]: {none}, expected 200 (an open route)")
            continue
        if none != 401:
            problems.append(f"{row} [no token]: {none}, expected 401")
        if wrong != 401:
            problems.append(f"{row} [wrong token]: {wrong}, expected 401")
        if scope == "write" and read != 403:
            problems.append(f"{row} [read token]: {read}, expected 403")
        if scope == "read" and read in (401, 403):
            problems.append(f"{row} [read token]: {read}, expected access")
        if write in (401, 403):
            problems.append(f"{row} [write token]: {write}, expected access")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "auth",
    [
        f"Basic {base64.b64encode(f'{WRITE}:'.encode()).decode()}",
        f"Basic {base64.b64encode(f'x:{WRITE}'.encode()).decode()}",
        f"Bearer {WRITE[:-1]}",  # a prefix
        f"Bearer {WRITE}x",  # longer
        f"Bearer {WRITE.upper()}",
        f"Token {WRITE}",
        WRITE,  # no scheme
        "Bearer",
    ],
)
def test_malformed_credentials_refused(server: Server, auth: str) -> None:
    assert call(server, "GET", "/api/v1/jobs", auth) == 401
    assert call(server, "POST", "/api/v1/jobs/ok/runs", auth) == 401


def test_scheme_is_case_insensitive(server: Server) -> None:
    """RFC 7235: the auth scheme is case-insensitive; the token is not."""
    assert call(server, "GET", "/api/v1/jobs", f"bearer {WRITE}") == 200


def test_auth_is_checked_before_the_body_is_validated(server: Server) -> None:
    """Wrong fields, wrong types, unstorable strings: an unauthenticated caller learns nothing
    about them (401), a read token gets 403. (A body that is not JSON at all is still refused
    first with its 400/422: FastAPI parses the body before it runs dependencies.)"""
    with httpx.Client(base_url=server.url + "/api/v1", timeout=10) as c:
        for body in (b'{"name": 7}', b"[]", b'{"p": "\\ud800"}', b'{"params": {"a": [[[[1]]]]}}'):
            for path in ("/jobs", "/jobs/ok/runs", "/jobs/ok"):
                method = "PUT" if path == "/jobs/ok" else "POST"
                r = c.request(method, path, content=body, headers={"content-type": "application/json"})
                assert r.status_code == 401, (method, path, body, r.status_code, r.text)
                r = c.request(
                    method,
                    path,
                    content=body,
                    headers={"content-type": "application/json", "authorization": f"Bearer {READ}"},
                )
                assert r.status_code == 403, (method, path, body, r.status_code, r.text)
