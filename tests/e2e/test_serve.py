"""jobwire as a user runs it: `jobwire serve` in a subprocess, driven over the API and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server
from tests.support.waiting import eventually_sync

JOBS = """
jobs:
  - name: greet
    parameters:
      - {{name: name, required: true}}
      - {{name: times, type: integer, default: 1}}
    target:
      type: local
      command: ["{py}", "-c", "import sys; print(('hello, ' + sys.argv[1] + chr(10)) * int(sys.argv[2]), end='')", "{{{{name}}}}", "{{{{times}}}}"]
  - name: fail
    target: {{type: local, command: ["false"]}}
  - name: sleepy
    concurrency: {{policy: forbid}}
    target: {{type: local, command: ["sleep", "30"]}}
"""


def write_jobs(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(py=sys.executable))
    return path


@pytest.fixture
def server(tmp_path: Path) -> Server:
    srv = Server(tmp_path / "data", write_jobs(tmp_path)).start()
    yield srv
    srv.stop()


def cli(
    server: Server, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    env["JOBWIRE_URL"] = server.url
    proc = subprocess.run(
        [sys.executable, "-m", "jobwire", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"jobwire {' '.join(args)} → {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_run(c: httpx.Client, run_id: str, timeout: float = 20) -> dict:
    def done() -> dict | None:
        r = c.get(f"/runs/{run_id}").json()
        return r if r["state"] in ("succeeded", "failed", "timed_out", "cancelled", "interrupted") else None

    return eventually_sync(done, timeout, f"run {run_id}")


def test_api_trigger_log_and_lineage(server: Server) -> None:
    with server.client() as c:
        jobs = c.get("/jobs").json()
        names = [j["name"] for j in (jobs["items"] if isinstance(jobs, dict) else jobs)]
        assert {"greet", "fail", "sleepy"} <= set(names)
        r = c.post("/jobs/greet/runs", json={"name": "ada", "times": 2})
        assert r.status_code == 201, r.text
        run = r.json()
        done = wait_run(c, run["id"])
        assert done["state"] == "succeeded" and done["exit_code"] == 0
        assert [h["state"] for h in done["history"]] == ["pending", "running", "succeeded"]
        assert c.get(f"/runs/{run['id']}/log").text == "hello, ada\nhello, ada\n"
        ev = c.get(f"/events/{done['event_id']}").json()
        assert json.dumps(ev).count(run["id"]) >= 1
        bad = c.post("/jobs/greet/runs", json={"times": "many"})
        assert bad.status_code == 422
        assert "name" in bad.text and "times" in bad.text
        assert c.post("/jobs/nope/runs", json={}).status_code == 404


def test_idempotency_key_over_http(server: Server) -> None:
    with server.client() as c:
        a = c.post("/jobs/greet/runs", json={"name": "x"}, headers={"Idempotency-Key": "abc"})
        b = c.post("/jobs/greet/runs", json={"name": "x"}, headers={"Idempotency-Key": "abc"})
        assert a.status_code == 201 and b.status_code == 200
        assert a.json()["id"] == b.json()["id"]


def test_cli_run_wait_exit_codes_and_lists(server: Server) -> None:
    ok = cli(server, "run", "greet", "--param", "name=bob", "--wait")
    assert ok.returncode == 0
    bad = cli(server, "run", "fail", "--wait", check=False)
    assert bad.returncode == 1
    listed = cli(server, "runs", "list", "--job", "greet", "--json")
    items = json.loads(listed.stdout)
    items = items["items"] if isinstance(items, dict) else items
    assert items and items[0]["job"] == "greet"
    assert "greet" in cli(server, "jobs", "list").stdout
    missing = cli(server, "run", "nope", check=False)
    assert missing.returncode == 2 and "nope" in (missing.stdout + missing.stderr)


def test_cancel_pause_resume_and_stream(server: Server) -> None:
    seen: list[dict] = []
    connected = threading.Event()

    def follow() -> None:
        with httpx.stream("GET", f"{server.url}/api/v1/stream", timeout=30) as resp:
            for line in resp.iter_lines():
                connected.set()  # the stream opens with a comment once it is subscribed
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:]))
                    if seen[-1]["action"] == "cancelled":
                        return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    assert connected.wait(10), "the stream did not open"
    with server.client() as c:
        run = c.post("/jobs/sleepy/runs", json={}).json()
        eventually_sync(lambda: c.get(f"/runs/{run['id']}").json()["state"] == "running", 10, "running")
        second = c.post("/jobs/sleepy/runs", json={})
        assert second.status_code in (200, 409), second.text
        assert c.post(f"/runs/{run['id']}/cancel").status_code == 200
        assert wait_run(c, run["id"])["state"] == "cancelled"
        assert c.post("/jobs/sleepy/pause").json()["paused"] is True
        assert c.post("/jobs/sleepy/resume").json()["paused"] is False
    t.join(10)
    mine = [d for d in seen if d["run_id"] == run["id"]]
    assert [d["action"] for d in mine] == ["pending", "running", "cancelled"]


def test_seed003_job_form_and_http_target(server: Server) -> None:
    with server.client() as c:
        body = {
            "name": "CLI",
            "description": "From CLI",
            "schedule": "* * * * *",
            "job": {"callback_url": f"{server.url}/healthz", "http_method": "get", "payload": {}},
        }
        r = c.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        got = c.get("/jobs/CLI").json()
        assert got["triggers"][0]["cron"] == "* * * * *"
        # the destination is loopback: refused unless allowed (SSRF guard)
        run = c.post("/jobs/CLI/runs", json={}).json()
        done = wait_run(c, run["id"])
        assert done["state"] == "failed" and done["error"]["reason"] == "DestinationRefused"
        assert c.delete("/jobs/CLI").status_code in (200, 204)
        assert c.get("/jobs/CLI").status_code == 404


def test_metrics_health_and_docs(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/docs").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/api/v1/jobs/{name}/runs" in spec["paths"]
    metrics = httpx.get(f"{server.url}/api/v1/metrics").text
    assert "jobwire_events_total" in metrics


def stop_while_running(tmp_path: Path, grace: str, stop: Callable[[Server], None]) -> None:
    """Start `serve`, trigger `sleepy` (`sleep 30`), `stop` it while the run runs; a restart finds
    the run interrupted."""
    srv = Server(tmp_path / "data", write_jobs(tmp_path), JOBWIRE_SHUTDOWN_GRACE=grace).start()
    try:
        with srv.client() as c:
            run = c.post("/jobs/sleepy/runs", json={}).json()
            eventually_sync(lambda: c.get(f"/runs/{run['id']}").json()["state"] == "running", 10, "running")
        stop(srv)
    finally:
        if srv.proc is not None and srv.proc.poll() is None:  # a failed assertion must not leave it running
            srv.proc.kill()
            srv.proc.wait(10)
    srv2 = Server(tmp_path / "data", write_jobs(tmp_path)).start()
    try:
        with srv2.client() as c:
            assert c.get(f"/runs/{run['id']}").json()["state"] == "interrupted"
    finally:
        srv2.stop()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    def stop(srv: Server) -> None:
        assert srv.stop() == 0

    stop_while_running(tmp_path, "0.5", stop)


def test_a_second_sigterm_stops_the_running_runs_at_once(tmp_path: Path) -> None:
    """The first signal gives running processes the grace (here 60 s, longer than `sleep 30`);
    a second one ends it: the process exits within seconds and the run is interrupted."""

    def stop(srv: Server) -> None:
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        eventually_sync(lambda: "waiting for running runs" in srv.output(), 10, "the grace begun")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        assert "not waiting for running runs any more: stopping them" in srv.output()

    stop_while_running(tmp_path, "60s", stop)


def test_second_serve_on_same_data_dir_refuses(server: Server, tmp_path: Path) -> None:
    other = Server(server.data_dir, write_jobs(tmp_path))
    with pytest.raises(RuntimeError, match="another jobwire"):
        other.start(timeout=20)


def test_auth_required_off_loopback(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", write_jobs(tmp_path), JOBWIRE_HOST="0.0.0.0")
    with pytest.raises(RuntimeError, match="JOBWIRE_API_TOKEN"):
        srv.start(timeout=20)
    srv = Server(
        tmp_path / "data2",
        write_jobs(tmp_path),
        JOBWIRE_HOST="0.0.0.0",
        JOBWIRE_API_TOKENS="readtok:read;writetok:read,write",
    ).start()
    try:
        assert httpx.get(f"{srv.url}/api/v1/jobs").status_code == 401
        with srv.client("readtok") as c:
            assert c.get("/jobs").status_code == 200
            assert c.post("/jobs/greet/runs", json={"name": "x"}).status_code == 403
        with srv.client("writetok") as c:
            assert c.post("/jobs/greet/runs", json={"name": "x"}).status_code == 201
        assert "readtok" not in srv.output() and "writetok" not in srv.output()
    finally:
        srv.stop()
