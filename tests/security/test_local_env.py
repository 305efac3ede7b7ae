"""Local jobs get a minimal environment, not the operator's (issue 7 #10 c)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from jobwire.model import Job
from jobwire.targets.local import inherited_env

CANARY = "CANARY-7f2c9d"


def test_local_jobs_inherit_a_minimal_environment() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "HOOK_SECRET": CANARY,
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "AWS_REGION": "eu-west-1",
        "JOBWIRE_API_TOKEN": CANARY,
        "MY_TOOL_HOME": "/opt/tool",
    }
    assert inherited_env(environ, []) == {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
    got = inherited_env(environ, ["MY_TOOL_HOME", "AWS_*"])
    assert got["MY_TOOL_HOME"] == "/opt/tool" and got["AWS_REGION"] == "eu-west-1"
    assert "HOOK_SECRET" not in got and "JOBWIRE_API_TOKEN" not in got


@pytest.mark.parametrize("name", ["JOBWIRE_API_TOKEN", "JOBWIRE_*", "BAD NAME", "A-B", "*"])
def test_inherit_env_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match=r"inherit_env|variable name|JOBWIRE"):
        Job.model_validate(
            {"name": "j", "target": {"type": "local", "command": ["true"], "inherit_env": [name]}}
        )


def test_a_local_job_does_not_see_the_operators_secret(tmp_path: Path) -> None:
    """End to end: a job printing its environment, under `jobwire serve` whose environment holds a
    sink-style secret; the run log (readable with a read-only token) does not show it."""
    from tests.support.server import Server
    from tests.support.waiting import eventually_sync

    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        "jobs:\n"
        "  - name: env\n"
        f"    target: {{type: local, command: [{sys.executable!r}, -c, 'import os; print(sorted(os.environ.items()))'], "
        "inherit_env: [WANTED_VAR]}\n"
    )
    srv = Server(tmp_path / "data", jobs, OPERATOR_HOOK_SECRET=CANARY, WANTED_VAR="wanted-value").start()
    try:
        with srv.client() as c:
            run = c.post("/jobs/env/runs", json={}).json()
            eventually_sync(lambda: c.get(f"/runs/{run['id']}").json()["state"] == "succeeded", 20, "run")
            log = c.get(f"/runs/{run['id']}/log").text
    finally:
        srv.stop()
    assert "wanted-value" in log and "'PATH'" in log and "JOBWIRE_RUN_ID" in log
    assert CANARY not in log
    assert "OPERATOR_HOOK_SECRET" not in log
    assert os.environ.get("OPERATOR_HOOK_SECRET") is None
