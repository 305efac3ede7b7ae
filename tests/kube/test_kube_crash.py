"""kill -9 of `jobwire serve` around the Job create: after restart exactly one Job, adopted and watched
to its end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobwire.targets.kubernetes import build
from tests.support.kubeemu import KubeEmulator
from tests.support.server import Server
from tests.support.waiting import eventually_sync

pytestmark = pytest.mark.slow

JOBS = """
jobs:
  - name: crashy
    parameters: [{name: file}]
    target:
      type: kubernetes
      image: busybox
      command: ["sh", "-c", "while [ ! -f $FLAG ]; do sleep 0.02; done; echo processed $JOBWIRE_PARAM_FILE"]
      env: {FLAG: "%s"}
"""


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS % (tmp_path / "go"))
    return path


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill9()


def jobs_of_run(kube: KubeEmulator, run_id: str) -> list[dict[str, Any]]:
    return [
        j
        for j in kube.control.objects("jobs", "default")
        if (j["metadata"].get("labels") or {}).get(build.LABEL_RUN) == run_id
    ]


def job_posts(kube: KubeEmulator) -> int:
    return len([p for m, p in kube.control.requests() if m == "POST" and "/jobs" in p])


@pytest.mark.parametrize("moment", ["created-not-recorded", "recorded-running"])
def test_kill9_around_the_job_create_leaves_exactly_one_job(
    kube: KubeEmulator,
    kube_kubeconfig: Path,
    tmp_path: Path,
    jobs_file: Path,
    servers: list[Server],
    moment: str,
) -> None:
    env = {"JOBWIRE_KUBECONFIG": str(kube_kubeconfig), "JOBWIRE_KUBE_NAMESPACE": "default"}
    srv = Server(tmp_path / "data", jobs_file, **env)
    servers.append(srv)
    srv.start()
    flag = tmp_path / "go"  # the container runs until this file exists
    if moment == "created-not-recorded":
        kube.control.pause_controller()  # the Job will exist, but never start: jobwire records nothing more
        flag.write_text("")
    with srv.client() as c:
        r = c.post("/jobs/crashy/runs", json={"file": "a.csv"})
        assert r.status_code in (200, 201, 202), r.text
        run_id = r.json()["run"]["id"] if "run" in r.json() else r.json()["id"]
        kube.control.wait_for(lambda _c: bool(jobs_of_run(kube, run_id)), timeout=20)
        if moment == "created-not-recorded":
            assert c.get(f"/runs/{run_id}").json()["state"] == "pending"
        else:
            eventually_sync(lambda: c.get(f"/runs/{run_id}").json()["state"] == "running", 20, "running")
    srv.kill9()
    assert job_posts(kube) == 1

    again = Server(tmp_path / "data", jobs_file, **env)
    servers.append(again)
    again.start()
    kube.control.resume_controller()
    flag.write_text("")
    with again.client() as c:
        run = eventually_sync(
            lambda: (doc := c.get(f"/runs/{run_id}").json())["state"] in ("succeeded", "failed") and doc,
            30,
            "run to finish after restart",
        )
        assert run["state"] == "succeeded", run
        assert run["target_ref"] == build.job_name("crashy", run_id)
        log = c.get(f"/runs/{run_id}/log").text
        assert "processed a.csv" in log
    assert len(jobs_of_run(kube, run_id)) == 1
    assert job_posts(kube) == 1  # adopted by name: never a second create
    again.stop()
