"""Two `jobwire serve` processes on one fresh PostgreSQL database, as a user runs replicas: a job
created over one's API is served by the other, an SSE client of one sees the runs made on the
other, and a run's callback sent to the replica that does not run it is accepted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.pgdb import create_database, drop_database
from tests.support.server import Server
from tests.support.waiting import eventually_sync

PY = sys.executable


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Server, Server, str]]:
    name, url = asyncio.run(create_database())
    env = {"JOBWIRE_DATABASE_URL": url, "JOBWIRE_DB_AUTO_MIGRATE": "true"}
    a = Server(tmp_path / "a", **env)
    b = Server(tmp_path / "b", **env)
    try:
        with a, b:
            yield a, b, url
    finally:
        asyncio.run(drop_database(name))


def test_catalogue_stream_and_callback_across_two_serve_processes(
    two: tuple[Server, Server, str], tmp_path: Path
) -> None:
    a, b, url = two
    token_file = tmp_path / "token"
    # the job writes its callback token where the test reads it, then ends; the run waits for the callback
    script = (
        "import os, pathlib; "
        f"pathlib.Path({str(token_file)!r}).write_text(os.environ['JOBWIRE_CALLBACK_TOKEN'])"
    )
    spec = {"target": {"type": "local", "command": [PY, "-c", script]}, "callback": {"wait": True}}
    with a.client() as ca, b.client() as cb:
        t0 = time.monotonic()
        assert ca.put("/jobs/handoff", json=spec).status_code in (200, 201)
        eventually_sync(lambda: cb.get("/jobs/handoff").status_code == 200, 10, "the job on b")
        seen_after = time.monotonic() - t0
        with httpx.Client(base_url=b.url + "/api/v1", timeout=httpx.Timeout(20)) as stream_client:
            with stream_client.stream("GET", "/stream") as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith(": connected")
                created = ca.post("/jobs/handoff/runs", json={})
                assert created.status_code == 201, created.text
                run_id = created.json()["id"]
                actions: list[str] = []
                for line in lines:
                    if not line.startswith("data: "):
                        continue
                    doc = json.loads(line[6:])
                    if doc["run_id"] != run_id:
                        continue
                    actions.append(doc["action"])
                    if doc["action"] == "running":
                        break
                assert actions == ["pending", "running"], actions
                token = eventually_sync(lambda: token_file.exists() and token_file.read_text(), 10, "token")
                bad = cb.post(
                    f"/runs/{run_id}/callback",
                    json={"ok": True},
                    headers={"Authorization": "Bearer " + "0" * len(token)},
                )
                assert bad.status_code == 403
                answer = cb.post(
                    f"/runs/{run_id}/callback",
                    json={"ok": True, "message": "via b", "data": {"n": 1}},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert answer.status_code == 200, answer.text
                for line in lines:  # the end, run on a, seen on b's stream
                    if line.startswith("data: ") and json.loads(line[6:])["run_id"] == run_id:
                        actions.append(json.loads(line[6:])["action"])
                        if actions[-1] == "succeeded":
                            break
        # the document is published as the state changes; the store has it once committed
        run = eventually_sync(
            lambda: (r := ca.get(f"/runs/{run_id}").json())["state"] == "succeeded" and r, 10, "stored end"
        )
        assert run["target_status"]["callback"]["message"] == "via b"
        assert actions[-1] == "succeeded"
        # deleted over b: gone on a
        assert cb.delete("/jobs/handoff").status_code in (200, 204)
        eventually_sync(lambda: ca.get("/jobs/handoff").status_code == 404, 10, "deleted on a")
    assert seen_after < 1.0, f"the job reached the other replica after {seen_after:.3f}s"
    key = asyncio.run(_stored_key(url))
    assert len(key) == 64 and not (tmp_path / "a" / "secret.key").exists()
    for server in (a, b):
        assert key not in server.output() and token not in server.output()


async def _stored_key(url: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT encode(value, 'hex') FROM jobwire_settings WHERE name = 'callback_key'"))
    finally:
        await conn.close()


def _metric(text: str, name: str, labels: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def _status(server: Server, *extra: str) -> subprocess.CompletedProcess[str]:
    jobwire = str(Path(PY).with_name("jobwire"))
    return subprocess.run(
        [jobwire, "status", "--url", server.url, *extra], capture_output=True, text=True, timeout=60, check=False
    )


def test_status_and_metrics_show_each_replicas_role_lease_and_heartbeat(two: tuple[Server, Server, str]) -> None:
    """`jobwire status`, `/readyz` and `/metrics` of both replicas agree on one leader, its lease
    token, and two live replicas with their heartbeats."""
    a, b, _ = two

    def both_see_two_alive() -> list[dict[str, Any]] | None:
        reports = [json.loads(_status(s, "--json").stdout)["replica"] for s in (a, b)]
        if any(sum(1 for r in rep["replicas"] if r["alive"]) != 2 for rep in reports):
            return None
        return reports if sum(1 for rep in reports if rep["leader"]) == 1 else None

    reports = eventually_sync(both_see_two_alive, 30, "two live replicas and one leader in both reports")
    leader = next(rep for rep in reports if rep["leader"])
    follower = next(rep for rep in reports if not rep["leader"])
    assert leader["lease_token"] >= 1
    assert follower["lease_token"] is None
    assert follower["leader_id"] == leader["id"] and leader["leader_id"] == leader["id"]
    assert {r["id"] for r in leader["replicas"]} == {leader["id"], follower["id"]}
    assert all(r["last_heartbeat"] and r["role"] == "all" for r in leader["replicas"])
    assert leader["last_heartbeat"] is not None and follower["last_heartbeat"] is not None

    by_id = {json.loads(_status(s, "--json").stdout)["replica"]["id"]: s for s in (a, b)}
    lead_text = httpx.get(f"{by_id[leader['id']].url}/metrics", timeout=10).text
    follow_text = httpx.get(f"{by_id[follower['id']].url}/metrics", timeout=10).text
    assert _metric(lead_text, "jobwire_leader") == 1.0
    assert _metric(follow_text, "jobwire_leader") == 0.0
    assert _metric(lead_text, "jobwire_replica_lease_token") == float(leader["lease_token"])
    assert _metric(follow_text, "jobwire_replica_lease_token") == 0.0
    for text in (lead_text, follow_text):
        assert _metric(text, "jobwire_replicas", '{state="alive"}') == 2.0
        assert (_metric(text, "jobwire_replica_heartbeat_timestamp_seconds") or 0) > time.time() - 60

    human = _status(by_id[leader["id"]])
    assert human.returncode == 0, human.stderr
    assert f"leader (lease token {leader['lease_token']})" in human.stdout
    assert follower["id"] in human.stdout and "alive" in human.stdout
