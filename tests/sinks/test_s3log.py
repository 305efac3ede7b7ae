"""The `s3log` sink (seed 004: each run's log in S3) in an engine, against moto's server over HTTP.

Each test makes its own bucket (`unique_name`); the one moto server of the test process serves all.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from jobwire.config import S3LogSinkSpec, Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from jobwire.sinks.s3log import log_key, segment
from tests.support.aws import unique_name
from tests.support.kubeemu import KubeEmulator
from tests.support.kubeemu.pytest_plugin import kube, kube_kubeconfig  # noqa: F401  (fixtures)
from tests.support.waiting import eventually

PY = sys.executable
SCRIPT = "import sys\nprint('first line')\nprint('ünïcode line', flush=True)\nsys.exit(int(sys.argv[1]))"


def s3() -> Any:
    return boto3.client("s3")


def job(name: str) -> Job:
    return Job.model_validate(
        {
            "name": name,
            "parameters": [{"name": "code", "default": "0"}],
            "target": {"type": "local", "command": [PY, "-c", SCRIPT, "{{code}}"]},
        }
    )


def engine(tmp_path: Path, settings: dict[str, Any] | None = None, **spec: Any) -> Engine:
    sink = S3LogSinkSpec(**spec)
    return Engine(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path / "d",
            sinks=[sink],
            shutdown_grace=timedelta(seconds=1),
            **(settings or {}),
        )
    )


async def objects(bucket: str) -> dict[str, bytes]:
    def read() -> dict[str, bytes]:
        client = s3()
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}

    try:
        return await asyncio.to_thread(read)
    except s3().exceptions.NoSuchBucket:
        return {}


async def run_log(eng: Engine, run_id: str) -> bytes:
    return b"".join([chunk async for chunk in eng.run_log(run_id)])


def failures(eng: Engine, metric: str = "jobwire_sink_failures_total") -> float:
    return eng.registry.get_sample_value(metric, {"sink": "s3log"}) or 0.0


async def test_a_runs_log_lands_at_its_key_when_the_run_ends(tmp_path: Path, aws_env: dict[str, str]) -> None:
    bucket = unique_name("jw-logs")
    await asyncio.to_thread(s3().create_bucket, Bucket=bucket)
    eng = engine(tmp_path, bucket=bucket, prefix="services/logs/")
    await eng.start()
    try:
        await eng.put_job(job("spike-sort"))
        ok = await eng.trigger("spike-sort", {"code": "0"})
        bad = await eng.trigger("spike-sort", {"code": "3"})
        assert ok.run and bad.run
        keys = {f"services/logs/spike-sort/{ok.run.id}.log", f"services/logs/spike-sort/{bad.run.id}.log"}
        got = await eventually(lambda: _when(objects(bucket), lambda o: set(o) == keys), 20, "both logs")
        assert (await eng.get_run(ok.run.id)).state == RunState.succeeded
        assert (await eng.get_run(bad.run.id)).state == RunState.failed
        for run_id in (ok.run.id, bad.run.id):
            body = got[f"services/logs/spike-sort/{run_id}.log"]
            assert body == await run_log(eng, run_id)  # what GET /runs/{id}/log serves
            assert body.decode() == "first line\nünïcode line\n"
        head = await asyncio.to_thread(
            s3().head_object, Bucket=bucket, Key=f"services/logs/spike-sort/{ok.run.id}.log"
        )
        assert head["ContentType"].startswith("text/plain")
        assert failures(eng) == 0
    finally:
        await eng.stop()


async def test_a_failing_s3_is_retried_and_counted(tmp_path: Path, aws_env: dict[str, str]) -> None:
    """The bucket does not exist when the run ends: each upload fails (NoSuchBucket), is counted
    and tried again with backoff; once the bucket exists the log lands."""
    bucket = unique_name("jw-late")
    eng = engine(tmp_path, bucket=bucket, prefix="", max_attempts=20)
    await eng.start()
    try:
        await eng.put_job(job("late"))
        adm = await eng.trigger("late", {"code": "0"})
        assert adm.run
        await eventually(lambda: failures(eng) >= 2, 20, "two failed uploads")
        await asyncio.to_thread(s3().create_bucket, Bucket=bucket)
        got = await eventually(lambda: _when(objects(bucket), bool), 30, "the log after the bucket exists")
        assert list(got) == [f"late/{adm.run.id}.log"]
        assert got[f"late/{adm.run.id}.log"] == b"first line\n\xc3\xbcn\xc3\xafcode line\n"
        assert failures(eng, "jobwire_sink_dropped_total") == 0
    finally:
        await eng.stop()


async def test_an_unreachable_s3_is_given_up_after_max_attempts(
    tmp_path: Path, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.aws import _free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: the standard chain
    eng = engine(tmp_path, bucket=unique_name("jw-away"), max_attempts=2)
    await eng.start()
    try:
        await eng.put_job(job("away"))
        adm = await eng.trigger("away", {"code": "0"})
        assert adm.run
        await eventually(lambda: failures(eng, "jobwire_sink_dropped_total") == 1, 20, "the sink to give up")
        assert failures(eng) == 2
        assert (await eng.get_run(adm.run.id)).state == RunState.succeeded  # the run is not held up
    finally:
        await eng.stop()


async def test_a_kubernetes_runs_pod_log_lands_in_s3(
    tmp_path: Path, aws_env: dict[str, str], kube: KubeEmulator, kube_kubeconfig: Path  # noqa: F811
) -> None:
    """Seed 004's jobs run on Kubernetes: the log written is the pod's (what the API serves)."""
    bucket = unique_name("jw-k8s")
    await asyncio.to_thread(s3().create_bucket, Bucket=bucket)
    k8s = {"kubeconfig": kube_kubeconfig, "kube_namespace": "default", "kube_cleanup_interval": timedelta(0)}
    eng = engine(tmp_path, k8s, bucket=bucket, prefix="services/logs")
    await eng.start()
    try:
        await eng.put_job(
            Job.model_validate(
                {
                    "name": "spike-sort",
                    "target": {
                        "type": "kubernetes",
                        "image": "braingeneers/spike-sort:latest",
                        "command": ["sh", "-c", "echo sorted; echo done"],
                    },
                }
            )
        )
        adm = await eng.trigger("spike-sort", {})
        assert adm.run
        key = f"services/logs/spike-sort/{adm.run.id}.log"
        got = await eventually(lambda: _when(objects(bucket), lambda o: key in o), 30, "the pod log in S3")
        assert (await eng.get_run(adm.run.id)).state == RunState.succeeded
        assert got[key] == b"sorted\ndone\n" == await run_log(eng, adm.run.id)
    finally:
        await eng.stop()


def test_keys_are_one_safe_segment_per_job_and_run() -> None:
    assert log_key("services/logs", "spike-sort", "r01") == "services/logs/spike-sort/r01.log"
    assert log_key("/a//b/", "j", "r") == "a/b/j/r.log"
    assert log_key("", "j", "r") == "j/r.log"
    assert log_key("p", "../x", "a/b") == "p/..%2Fx/a%2Fb.log"
    assert segment("..") == "%2E%2E" and segment(".") == "%2E" and segment("") == "_"
    assert segment("a b?#") == "a%20b%3F%23"


async def _when(value: Any, ok: Any) -> Any:
    got = await value
    return got if ok(got) else None
