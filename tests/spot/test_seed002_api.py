"""Seed 002 end to end through its REST operations (schedule, list, status, callback), in process
and through `jobwire serve` with a kill -9 between the spot request and recording the instance."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import boto3
import httpx

from jobwire.api.app import create_app
from jobwire.api.routes_seed002 import run_key_of
from jobwire.engine import Engine
from jobwire.engine.secret import CallbackTokens
from jobwire.model import Event, Run, RunState, Transition, run_id_for, utcnow
from jobwire.store import Intake
from tests.spot.conftest import SPOT_ENV, instance_state
from tests.support.aws import MotoServer
from tests.support.server import Server
from tests.support.waiting import eventually, eventually_sync


def client(engine: Engine) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(engine))
    return httpx.AsyncClient(transport=transport, base_url="http://jobwire/api/v1")


async def test_schedule_list_status_callback(engine: Engine) -> None:
    async with client(engine) as c:
        for bad in (
            {"image": "busybox", "datetime": "2026-12-01T10:00:00Z", "env": ["1BAD=x"]},
            {"image": "busybox", "datetime": "2026-12-01T10:00:00"},  # no zone
            {"image": "busybox", "datetime": "0001-01-01T00:00:00+01:00"},
            {"datetime": "2026-12-01T10:00:00Z"},
        ):
            r = await c.post("/seed002/schedule", json=bad)
            assert r.status_code == 422, (bad, r.text)
        r = await c.post(
            "/seed002/schedule",
            json={
                "dockerImage": "busybox:1.36",
                "dateTime": (utcnow() - timedelta(seconds=5)).isoformat(),
                "envVars": ["INPUT=s3://in/file.csv", "MODE=fast"],
            },
        )
        assert r.status_code == 201, r.text
        doc = r.json()
        name, run_id = doc["id"], doc["run_id"]
        assert doc["env"] == ["INPUT=s3://in/file.csv", "MODE=fast"]

        async def running() -> dict | None:
            d = (await c.get(f"/seed002/status/{name}")).json()
            return d if d["status"] == "Running" else None

        doc = await eventually(running, 15, "seed 002 status Running")
        assert doc["instance_id"].startswith("i-")
        listed = (await c.get("/seed002/list")).json()["items"]
        assert [d["id"] for d in listed if d["id"] == name] == [name]
        runs = (await c.get("/runs", params={"job": name})).json()["items"]
        assert [r["id"] for r in runs] == [run_id]

        r = await c.post(
            f"/seed002/callback/{name}",
            json={"status": "FinishedOK"},
            headers={"Authorization": "Bearer nope"},
        )
        assert r.status_code == 403
        token = engine.callback_token(run_id)
        r = await c.post(
            f"/seed002/callback/{name}",
            json={"status": "FinishedOK"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text

        async def terminated() -> dict | None:
            d = (await c.get(f"/seed002/status/{name}")).json()
            return d if d["status"] == "TerminatedOK" else None

        doc = await eventually(terminated, 15, "seed 002 status TerminatedOK")
        assert [h["state"] for h in doc["history"]] == [
            "Scheduled",
            "Requested",
            "Running",
            "FinishedOK",
            "TerminatedOK",
        ]
        assert await instance_state(doc["instance_id"]) in ("shutting-down", "terminated")
        r = await c.post(
            f"/seed002/callback/{name}",
            json={"status": "FinishedNOK"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 409


def _instances_of(run_id: str) -> dict[str, str]:
    """Instance id → state, of every spot request tagged with the run."""
    ec2 = boto3.client("ec2")
    reqs = ec2.describe_spot_instance_requests(Filters=[{"Name": "tag:jobwire:run", "Values": [run_id]}])
    out: dict[str, str] = {}
    for req in reqs["SpotInstanceRequests"]:
        if req.get("InstanceId"):
            inst = ec2.describe_instances(InstanceIds=[req["InstanceId"]])["Reservations"][0]["Instances"][0]
            out[req["InstanceId"]] = inst["State"]["Name"]
    return out


def test_kill9_between_request_and_recording_the_instance_never_leaks(
    moto: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**moto.env, **SPOT_ENV, "JOBWIRE_SPOT_RECONCILE_INTERVAL": "300ms"}
    data = tmp_path / "data"
    srv = Server(data, **env).start()
    try:
        with srv.client() as c:
            at = utcnow() + timedelta(seconds=1)
            r = c.post(
                "/seed002/schedule", json={"image": "busybox", "datetime": at.isoformat(), "env": ["A=1"]}
            )
            assert r.status_code == 201, r.text
            name, run_id = r.json()["id"], r.json()["run_id"]
        # the moment the request exists in EC2, before (or just as) the run records its instance
        eventually_sync(lambda: _instances_of(run_id) or None, 20, "the spot request")
        srv.kill9()
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.kill9()
    srv2 = Server(data, **env).start()
    try:
        with srv2.client() as c:

            def adopted() -> dict | None:
                d = c.get(f"/seed002/status/{name}").json()
                return d if d["status"] == "Running" and d["instance_id"] else None

            doc = eventually_sync(adopted, 20, "the run running on its instance after restart")
            live = {i: s for i, s in _instances_of(run_id).items() if s in ("pending", "running")}
            assert list(live) == [doc["instance_id"]], live  # adopted, not requested twice
            # a few reconcile sweeps later the adopted instance is still there
            eventually_sync(lambda: c.get("/readyz").status_code == 200, 5)
            tokens = CallbackTokens()
            tokens.load(data)
            r = c.post(
                f"/seed002/callback/{name}",
                json={"status": "FinishedOK"},
                headers={"Authorization": f"Bearer {tokens.token(run_id)}"},
            )
            assert r.status_code == 200, r.text
            eventually_sync(
                lambda: c.get(f"/seed002/status/{name}").json()["status"] == "TerminatedOK",
                20,
                "TerminatedOK",
            )
            assert all(s in ("shutting-down", "terminated") for s in _instances_of(run_id).values())
    finally:
        srv2.stop()


def test_kill9_then_the_run_ends_while_down_its_instance_is_terminated(
    moto: MotoServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The job is removed from its file while jobwire is down: at restart its run fails (JobDeleted)
    and the reconciler, with no spot job left defined, still terminates the run's instance."""
    env = {**moto.env, **SPOT_ENV, "JOBWIRE_SPOT_RECONCILE_INTERVAL": "300ms"}
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        "jobs:\n  - name: crunch\n    triggers: [api]\n    target: {type: spot, image: busybox}\n"
        "  - name: other\n    target: {type: local, command: ['true']}\n"
    )
    data = tmp_path / "data"
    srv = Server(data, jobs, **env).start()
    try:
        with srv.client() as c:
            r = c.post("/jobs/crunch/runs", json={})
            assert r.status_code == 201, r.text
            run_id = r.json()["id"]
        eventually_sync(lambda: _instances_of(run_id) or None, 20, "the spot request")
        srv.kill9()
    finally:
        if srv.proc and srv.proc.poll() is None:
            srv.kill9()
    jobs.write_text("jobs:\n  - name: other\n    target: {type: local, command: ['true']}\n")
    srv2 = Server(data, jobs, **env).start()
    try:
        with srv2.client() as c:
            run = eventually_sync(
                lambda: (d := c.get(f"/runs/{run_id}").json())["state"] == "failed" and d,
                20,
                "the run to fail",
            )
            assert run["error"]["reason"] == "JobDeleted"
        eventually_sync(
            lambda: all(s in ("shutting-down", "terminated") for s in _instances_of(run_id).values()),
            20,
            "the orphaned instance to be terminated",
        )
        eventually_sync(lambda: not (data / "spot-instances").exists(), 20, "the marker gone: nothing left")
    finally:
        srv2.stop()


async def test_a_run_recorded_under_an_older_id_is_still_the_jobs_run(engine: Engine) -> None:
    """Before session 17 a fire's run id was the hash of its key alone; now it leads with the fire
    time. A seed 002 job whose run was recorded under the old id finds it by its key: its status
    shows that run, and its instance's callback token (made over the old id) is still accepted."""
    at = utcnow() + timedelta(days=1)
    async with client(engine) as c:
        r = await c.post("/seed002/schedule", json={"dockerImage": "busybox:1.36", "dateTime": at.isoformat()})
        assert r.status_code == 201, r.text
        name = r.json()["id"]
        key = run_key_of(engine.jobs[name].job)
        old_id = "r" + hashlib.sha256(key.encode()).hexdigest()[:23]
        assert run_id_for(key) != old_id and r.json()["run_id"] == run_id_for(key)
        now = utcnow()
        event = Event(id="e-old", job=name, trigger="at", source="at", received_at=now, run_id=old_id)
        run = Run(
            id=old_id, key=key, job=name, trigger="at", event_id=event.id, state=RunState.running,
            created_at=now, target_status={"state": "Running", "instance_id": "i-0123456789abcdef0"},
            history=[Transition(state=RunState.running, at=now)],
        )  # fmt: skip
        await engine.store.record([Intake(event=event, run=run)])

        doc = (await c.get(f"/seed002/status/{name}")).json()
        assert (doc["run_id"], doc["status"], doc["instance_id"]) == (old_id, "Running", "i-0123456789abcdef0")
        url = f"/seed002/callback/{name}"
        token = engine.callback_token(run_id_for(key))  # over the id this version would have made
        r = await c.post(url, json={"status": "FinishedOK"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403, r.text
        token = engine.callback_token(old_id)
        r = await c.post(url, json={"status": "FinishedOK"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code != 403, r.text  # accepted; the run is not in flight here, so not ended
