"""Seed 004 end to end: a `jobs.csv` registry, MQTT messages (real Mosquitto) launching Kubernetes
Jobs (the API emulator), the CSV edited while jobwire runs — a removed row stops its trigger while
its run in progress goes on to succeed — and finished Jobs of CSV jobs deleted by the cleanup."""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Run, RunState, utcnow
from jobwire.store import RunQuery
from jobwire.targets.kubernetes import KubernetesJobTarget, build
from tests.support.kubeemu import KubeEmulator
from tests.support.kubeemu.pytest_plugin import kube, kube_kubeconfig
from tests.support.mqtt import forget_session, need_mosquitto, publisher, unique
from tests.support.server import Server
from tests.support.waiting import eventually, eventually_sync

__all__ = ["kube", "kube_kubeconfig"]  # the emulator's fixtures, used by name below

NS = "default"
COLUMNS = [
    "job_name",
    "mqtt_topic",
    "image",
    "cpu_request",
    "memory_request",
    "gpu",
    "disk_request",
    "cpu_limit",
    "memory_limit",
    "disk_limit",
    "command",
]


def csv_text(*rows: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return out.getvalue()


def rewrite(path: Path, text: str) -> None:
    """New contents with an mtime surely different from the last one seen."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


async def runs_of(engine: Engine, job: str) -> list[Run]:
    return list((await engine.store.list_runs(RunQuery(job=job, limit=100))).items)


def mqtt_sources(engine: Engine) -> list[dict[str, Any]]:
    return [s for s in engine.health()["sources"] if s.get("kind") == "mqtt"]


def k8s_jobs(kube: KubeEmulator, job: str) -> list[dict[str, Any]]:
    return [
        j
        for j in kube.control.objects("jobs", NS)
        if (j["metadata"].get("labels") or {}).get(build.LABEL_JOB) == job
    ]


@pytest.fixture
def mqtt_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    need_mosquitto()
    prefix = f"jwtest/{uuid.uuid4().hex[:12]}"
    client_id = unique("jwtest-csv")
    monkeypatch.setenv("JOBWIRE_MQTT_URL", "mqtt://127.0.0.1:1883")
    monkeypatch.setenv("JOBWIRE_MQTT_CLIENT_ID", client_id)
    monkeypatch.setenv("JOBWIRE_MQTT_STATUS_PREFIX", f"{prefix}/services/mqtt_job_listener")
    yield prefix, client_id


async def test_seed004_csv_edited_while_running(
    kube: KubeEmulator, kube_kubeconfig: Path, tmp_path: Path, mqtt_env: tuple[str, str]
) -> None:
    prefix, client_id = mqtt_env
    gate = tmp_path / "go"
    sorter_cmd = f'sh -c "while [ ! -f {gate} ]; do sleep 0.05; done; echo sorted $JOBWIRE_PARAM_PAYLOAD"'
    sorter = [
        "sorter",
        f"{prefix}/recordings/+/done",
        "lab/sort:1",
        "500m",
        "1Gi",
        "1",
        "2Gi",
        "1",
        "2Gi",
        "4Gi",
    ]
    other = ["other", f"{prefix}/other", "lab/other:1", "", "", "", "", "", "", "", 'sh -c "echo other"']
    registry = tmp_path / "jobs.csv"
    registry.write_text(csv_text([*sorter, sorter_cmd]))
    engine = Engine(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path / "data",
            jobs=[registry],  # JOBWIRE_RELOAD not set: a CSV registry is re-read when it changes
            kubeconfig=kube_kubeconfig,
            kube_namespace=NS,
            kube_cleanup_interval=timedelta(0),  # sweeps run below, with a chosen "now"
            shutdown_grace=timedelta(seconds=0.5),
        )
    )
    target = engine.targets["kubernetes"]
    assert isinstance(target, KubernetesJobTarget)

    async def run_exists(run_id: str) -> bool:
        return await engine.store.get_run(run_id) is not None

    target.bind(run_exists=run_exists, jobs=engine.job_registry.job_defs, registry=engine.registry)
    await engine.start()
    try:
        assert engine.settings.reload is True
        await eventually(
            lambda: any(s["connected"] for s in mqtt_sources(engine)), 20, "the mqtt source to connect"
        )
        async with publisher() as pub:
            await pub.publish(f"{prefix}/recordings/r1/done", b"rec-1", qos=1)

        async def sorter_running() -> Run | None:
            runs = await runs_of(engine, "sorter")
            return runs[0] if runs and runs[0].state == RunState.running else None

        run = await eventually(sorter_running, 30, "the sorter run to be running")
        ((k8s_job,),) = [k8s_jobs(kube, "sorter")]
        (container,) = k8s_job["spec"]["template"]["spec"]["containers"]
        assert container["resources"] == {
            "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi", "nvidia.com/gpu": "1"},
            "limits": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "4Gi", "nvidia.com/gpu": "1"},
        }

        # the registry is edited while the run goes on: sorter's row removed, a row added, a bad row
        bad = ["bad", f"{prefix}/bad", "img", "2 cores", "", "", "", "", "", "", ""]
        rewrite(registry, csv_text(other, bad))
        await eventually(lambda: sorted(engine.jobs) == ["other"], 20, "the reload to apply the edit")

        def resubscribed() -> bool:
            return any(
                s["connected"] and f"{prefix}/other" in s["target"] and "recordings" not in s["target"]
                for s in mqtt_sources(engine)
            )

        await eventually(resubscribed, 20, "the mqtt source to follow the edit")
        async with publisher() as pub:  # one connection: delivered in this order
            await pub.publish(f"{prefix}/recordings/r2/done", b"rec-2", qos=1)
            await pub.publish(f"{prefix}/other", b"x", qos=1)

        async def other_done() -> Run | None:
            runs = await runs_of(engine, "other")
            return runs[0] if runs and runs[0].state.terminal else None

        other_run = await eventually(other_done, 30, "the other run to end")
        assert other_run.state == RunState.succeeded
        assert [r.id for r in await runs_of(engine, "sorter")] == [run.id]  # its trigger is gone
        assert (await engine.get_run(run.id)).state == RunState.running  # and its run was not killed

        gate.touch()

        async def sorter_done() -> Run | None:
            r = await engine.get_run(run.id)
            return r if r.state.terminal else None

        ended = await eventually(sorter_done, 30, "the sorter run to end")
        assert ended.state == RunState.succeeded
        log = b"".join([c async for c in engine.run_log(run.id)]).decode()
        assert "sorted rec-1" in log

        # cleanup: a CSV job's finished Job goes on the first sweep a minute after it finished
        assert len(k8s_jobs(kube, "other")) == 1
        swept = await target.sweep(now=utcnow() + timedelta(seconds=30))
        assert k8s_jobs(kube, "other") and not swept.deleted_jobs
        swept = await target.sweep(now=utcnow() + timedelta(seconds=90))
        assert k8s_jobs(kube, "other") == [] and len(swept.deleted_jobs) == 1
        # a removed row's Job falls back to the general policy (the newest CLEANUP_MIN are kept)
        assert len(k8s_jobs(kube, "sorter")) == 1
    finally:
        await engine.stop()
        await forget_session(client_id)


def test_jobwire_serve_starts_with_a_bad_row_and_follows_edits(tmp_path: Path) -> None:
    """As a user runs it: `JOBWIRE_JOBS=jobs.csv jobwire serve`, nothing else set."""
    registry = tmp_path / "jobs.csv"
    good = [
        "spike-sort",
        "experiments/+/done",
        "lab/sort:1",
        "2",
        "8Gi",
        "1",
        "20Gi",
        "4",
        "16Gi",
        "40Gi",
        "",
    ]
    bad = ["broken", "a/b", "img", "2 cores", "", "", "", "", "", "", ""]
    registry.write_text(csv_text(good, bad))
    # a broker that is not there: the mqtt source retries on its own; definitions are what is looked at
    srv = Server(tmp_path / "data", registry, JOBWIRE_MQTT_URL="mqtt://127.0.0.1:9").start()
    try:

        def names() -> list[str]:
            body = httpx.get(f"{srv.url}/api/v1/jobs", timeout=5).json()
            return sorted(j["name"] for j in body["items"])

        assert names() == ["spike-sort"]
        assert f"{registry}:3: column cpu_request: '2 cores' is not a Kubernetes quantity" in srv.output()
        added = ["summarize", "services/mqtt_job_listener/job_complete/spike-sort", "lab/sum:1", *[""] * 8]
        rewrite(registry, csv_text(added))
        eventually_sync(lambda: names() == ["summarize"], 20, "serve to follow the edit")
    finally:
        assert srv.stop() == 0
