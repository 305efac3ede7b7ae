"""schemathesis against `/openapi.json` of a running `jobwire serve`, with a write token (issue 7).

Bounded and reproducible: a fixed seed, a fixed number of examples per operation, every operation
but the endless `/stream`. Checks, and why each is sound for this API:
- `not_a_server_error`: no input may produce a 5xx;
- `status_code_conformance`: every status the API answers is documented (400/401/403/404/409/413/422
  are, on every route), so a client can rely on the document;
- `content_type_conformance` and `response_schema_conformance`: what is answered is what is
  documented (the error shape too).
`negative_data_rejection`/`positive_data_acceptance` are left out: the job model is stricter than its
JSON schema can say (cross-field rules: a cron that parses, a target that fits its type), so they
would flag correct refusals. Stateful testing is left out: it would define jobs from generated
data, and a generated `local` job runs a generated command on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server

TOKEN = "fuzz-write-token-0123456789"
JOBS = """
jobs:
  - name: ok
    parameters: [{name: day, default: "2026-01-01"}, {name: pw, secret: true, default: x}]
    target: {type: local, command: ["true"]}
  - name: hook
    triggers: [{webhook: {secret_env: FUZZ_HOOK_SECRET}}, {cron: "0 0 1 1 *"}]
    target: {type: http, url: "http://127.0.0.1:9/x"}
"""
EXAMPLES = 25
SEED = 7


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(tmp_path / "data", jobs, JOBWIRE_API_TOKEN=TOKEN, FUZZ_HOOK_SECRET="s").start()
    yield srv
    srv.stop()


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    with server.client(TOKEN) as c:  # some runs and events for the read routes to find
        for i in range(3):
            assert c.post("/jobs/ok/runs", json={"day": f"2026-01-0{i + 1}"}).status_code == 201
    st = Path(sys.executable).with_name("schemathesis")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    proc = subprocess.run(
        [
            str(st), "run", f"{server.url}/openapi.json",
            "-H", f"Authorization: Bearer {TOKEN}",
            # one worker: two worker threads compiling at once hit CPython 3.11.7's "AST constructor
            # recursion depth mismatch" inside schemathesis (a Runtime Error, not a finding; seen in CI)
            "-n", str(EXAMPLES), "--seed", str(SEED), "-w", "1", "--no-shrink",
            "-c", "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--exclude-path", "/api/v1/stream",
            "--request-timeout", "10",
            "--report", "ndjson", "--report-dir", str(tmp_path / "report"),
        ],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, f"schemathesis found failures (seed {SEED}):\n{proc.stdout}\n{proc.stderr}"
    assert " passed" in proc.stdout
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert "Traceback" not in server.output()
    assert TOKEN not in server.output()
