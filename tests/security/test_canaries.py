"""Secret canaries (issue 7 #2, #10): secrets planted everywhere an operator or a caller puts them
must not come out anywhere they need not be — the server log in both formats, every GET of the
API, the live stream, /metrics, run logs, and the database where a secret need not be stored."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from jobwire.logging import configure_logging
from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from tests.support.server import Server
from tests.support.waiting import eventually_sync

TOKEN = "CANARY-TOKEN-4b1e"
HOOK = "CANARY-HOOK-8c2f"
SINK = "CANARY-SINK-3d9a"
SINK_URLPW = "CANARY-SINKURL-6e0b"
PARAM = "CANARY-PARAM-1f7c"
URLPW = "CANARY-URLPW-5a3d"
OPERATOR = "CANARY-OPERATOR-9b4e"
ALL = (TOKEN, HOOK, SINK, SINK_URLPW, PARAM, URLPW, OPERATOR)


def jobs_yaml(py: str) -> str:
    return f"""
jobs:
  - name: printer
    parameters: [{{name: pw, secret: true}}, {{name: day, default: "d1"}}]
    target: {{type: local, command: [{py!r}, -c, "import os, sys; print(sorted(os.environ)); print(sys.argv)", "{{{{day}}}}"]}}
  - name: failing
    parameters: [{{name: pw, secret: true}}]
    target: {{type: local, command: ["false"]}}
  - name: caller
    target: {{type: http, url: "http://bob:{URLPW}@127.0.0.1:9/x", timeout: 2s}}
  - name: hook
    triggers: [{{webhook: {{secret_env: CANARY_HOOK_SECRET}}}}]
    target: {{type: local, command: ["true"]}}
"""


def exercise(srv: Server) -> str:
    """Drive every kind of traffic; return everything the API answered (GETs, stream, metrics, logs)."""
    seen: list[str] = []
    stream_text: list[str] = []
    opened = threading.Event()

    def read_stream() -> None:
        with httpx.stream(
            "GET", f"{srv.url}/api/v1/stream", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as r:
            for line in r.iter_lines():
                opened.set()
                stream_text.append(line)
                if sum("finished" in x or "failed" in x for x in stream_text) >= 4:
                    return

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    assert opened.wait(10)
    with srv.client(TOKEN) as c:
        runs = [
            c.post("/jobs/printer/runs", json={"pw": PARAM}).json(),
            c.post("/jobs/failing/runs", json={"pw": PARAM}).json(),
            c.post("/jobs/caller/runs", json={}).json(),
        ]
        body = json.dumps({"ref": "main", "auth": {"password": PARAM}}).encode()  # an undeclared secret
        t = int(time.time())
        r = httpx.post(
            f"{srv.url}/api/v1/jobs/hook/webhook",
            content=body,
            headers={SIGNATURE_HEADER: sign(HOOK.encode(), body, t, delivery="d1"), DELIVERY_HEADER: "d1"},
        )
        assert r.status_code == 201, r.text
        runs.append(r.json())
        # bad input of every kind: errors must not echo secrets either
        seen.append(c.post("/jobs/printer/runs", json={"pw": 5, "api_token": PARAM}).text)
        seen.append(c.post("/jobs", json={"name": "x", "parameters": [{"name": "s", "secret": True, "type": "integer", "default": PARAM}], "target": {"type": "local", "command": ["true"]}}).text)
        for run in runs:
            eventually_sync(
                lambda rid=run["id"]: c.get(f"/runs/{rid}").json()["state"] in ("succeeded", "failed"), 30, "run"
            )
        doc = httpx.get(f"{srv.url}/openapi.json").json()
        fill = {"name": "printer", "run_id": runs[0]["id"], "event_id": runs[0]["event_id"]}
        for template, ops in doc["paths"].items():
            if "get" not in ops or template.endswith("/stream"):
                continue
            path = template.replace("/api/v1", "")
            for k, v in fill.items():
                path = path.replace("{" + k + "}", v)
            seen.append(c.get(path).text)
        for run in runs:
            seen.append(c.get(f"/runs/{run['id']}").text)
            seen.append(c.get(f"/runs/{run['id']}/log").text)
            seen.append(c.get(f"/events/{run['event_id']}").text)
        seen.append(c.get("/jobs/caller").text)
        seen.append(httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text)
        seen.append(httpx.get(f"{srv.url}/readyz").text)
    reader.join(15)
    seen.append("\n".join(stream_text))
    return "\n".join(seen)


@pytest.fixture(params=["console", "json"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(jobs_yaml(sys.executable))
    sinks = [{"type": "webhook", "url": f"http://hook:{SINK_URLPW}@127.0.0.1:9/status", "secret_env": "CANARY_SINK_SECRET", "max_attempts": 2}]
    srv = Server(
        tmp_path / "data",
        jobs,
        JOBWIRE_API_TOKEN=TOKEN,
        JOBWIRE_LOG_FORMAT=request.param,
        JOBWIRE_HTTP_ALLOW_PRIVATE="true",
        JOBWIRE_SINKS=json.dumps(sinks),
        CANARY_HOOK_SECRET=HOOK,
        CANARY_SINK_SECRET=SINK,
        UNRELATED_OPERATOR_VAR=OPERATOR,
    ).start()
    yield srv
    srv.stop()


def test_no_canary_escapes(server: Server) -> None:
    answered = exercise(server)
    assert "printer" in answered and "succeeded" in answered  # the sweep really saw runs
    leaks = {c for c in ALL if c in answered}
    assert not leaks, f"in API answers, the stream, metrics or run logs: {leaks}"
    server.stop()
    log = server.output()
    assert "local process" in log or "run" in log  # the log really has lines
    leaks = {c for c in ALL if c in log}
    assert not leaks, f"in the server log: {leaks}"
    db = sqlite3.connect(server.data_dir / "jobwire.db")
    dump = "\n".join(db.iterdump())
    db.close()
    # Never stored: tokens, webhook and sink secrets, the operator's environment.
    assert not {c for c in (TOKEN, HOOK, SINK, SINK_URLPW, OPERATOR) if c in dump}
    # A secret parameter's value is kept with its run (a retry after a restart needs it), never
    # with the event (lineage shows it masked); a target URL is part of its job's definition.
    events = "\n".join(line for line in dump.splitlines() if 'INSERT INTO "events"' in line)
    assert events and PARAM not in events


def test_tracebacks_show_no_locals_in_any_format() -> None:
    """An unhandled error while a request holds a secret in a local variable (the attack put 14
    copies of the bearer token in the console log): no format prints locals."""
    for fmt in ("console", "json"):
        buf = io.StringIO()
        configure_logging("info", fmt, stream=buf)

        def handler(authorization: str, body: bytes) -> None:
            secret = authorization.removeprefix("Bearer ")
            raise RecursionError(f"nested too deep ({len(body)} bytes, key {len(secret)} chars)")

        try:
            handler(f"Bearer {TOKEN}", HOOK.encode())
        except RecursionError:
            structlog.get_logger("jobwire.api").exception("unhandled error in request")
        try:
            handler(f"Bearer {TOKEN}", HOOK.encode())
        except RecursionError:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
        text = buf.getvalue()
        assert text.count("Traceback") == 2, text
        assert TOKEN not in text and HOOK not in text, f"{fmt}: {text}"
    configure_logging("info", "console")
