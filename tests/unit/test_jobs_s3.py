"""Seed 004's jobs.csv kept in S3 (`JOBWIRE_JOBS=s3://bucket/key`), against moto's server over HTTP:
read at start, re-read when its ETag changes (HeadObject only while it does not), a file that
cannot be read at start is one clear line, and one that cannot be read later keeps the jobs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from jobwire.config import S3Url, Settings
from jobwire.engine import Engine
from jobwire.jobfile import JobFileError
from tests.support.aws import MotoServer, aws_env, moto, unique_name  # noqa: F401  (fixtures)
from tests.support.server import Server
from tests.support.waiting import eventually, eventually_sync

HEADER = "job_name,mqtt_topic,image,cpu_request,memory_request,gpu,disk_request,cpu_limit,memory_limit,disk_limit\n"
SEED_ROW = "spike-sort,services/spikes/new,braingeneers/spike-sort:latest,2,8Gi,1,20Gi,4,16Gi,40Gi\n"
OTHER_ROW = "summarize,services/mqtt_job_listener/job_complete/spike-sort,lab/sum:1,,,,,,,\n"


@pytest.fixture
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    request.getfixturevalue("aws_env")  # moto's server, the AWS_* variables set
    # a broker that is not there: the mqtt source retries on its own; definitions are what is looked at
    monkeypatch.setenv("JOBWIRE_MQTT_URL", "mqtt://127.0.0.1:9")
    yield boto3.client("s3")


def put(client: Any, bucket: str, key: str, text: str) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=text.encode())


def settings(tmp_path: Path, *jobs: str, **kw: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        jobs=list(jobs),
        shutdown_grace=timedelta(seconds=0.2),
        kube_cleanup_interval=timedelta(0),
        **kw,
    )


class Counted:
    """Counts the S3 calls the job registry makes (HeadObject, GetObject)."""

    def __init__(self, engine: Engine) -> None:
        files = engine.job_registry.s3_files
        assert files is not None
        self.heads = self.gets = 0
        etag, get = files.s3.etag, files.s3.get

        async def counted_etag(*a: Any) -> str:
            self.heads += 1
            return await etag(*a)

        async def counted_get(*a: Any) -> tuple[str, bytes]:
            self.gets += 1
            return await get(*a)

        files.s3.etag = counted_etag  # type: ignore[method-assign]
        files.s3.get = counted_get  # type: ignore[method-assign]


async def test_csv_in_s3_is_read_at_start_and_followed_by_etag(tmp_path: Path, s3: Any) -> None:
    bucket = unique_name("jw-jobs")
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    await asyncio.to_thread(put, s3, bucket, "services/jobs.csv", HEADER + SEED_ROW)
    url = f"s3://{bucket}/services/jobs.csv"
    engine = Engine(settings(tmp_path, url))
    await engine.start()
    try:
        assert sorted(engine.jobs) == ["spike-sort"]
        assert engine.jobs["spike-sort"].origin == f"file:{url}"
        assert engine.settings.reload is True  # as for a local jobs.csv
        calls = Counted(engine)
        # unchanged: the loop asks for the ETag, downloads nothing
        await eventually(lambda: calls.heads >= 2, 10, "two ETag checks")
        assert calls.gets == 0
        await asyncio.to_thread(put, s3, bucket, "services/jobs.csv", HEADER + OTHER_ROW + SEED_ROW)
        await eventually(lambda: sorted(engine.jobs) == ["spike-sort", "summarize"], 10, "the new row")
        assert calls.gets == 1
        heads = calls.heads
        await eventually(lambda: calls.heads >= heads + 2, 10, "two more ETag checks")
        assert calls.gets == 1
        assert sorted(s.job.name for s in await engine.store.list_jobs()) == ["spike-sort", "summarize"]
    finally:
        await engine.stop()


async def test_a_failed_read_while_running_keeps_the_jobs_and_is_shown(tmp_path: Path, s3: Any) -> None:
    bucket = unique_name("jw-jobs")
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    await asyncio.to_thread(put, s3, bucket, "jobs.csv", HEADER + SEED_ROW)
    engine = Engine(settings(tmp_path, f"s3://{bucket}/jobs.csv"))
    await engine.start()
    try:
        await asyncio.to_thread(s3.delete_object, Bucket=bucket, Key="jobs.csv")

        def reload_failing() -> str | None:
            task = next(t for t in engine.health()["tasks"] if t["task"] == "jobwire-reload")
            return task["last_error"] if task["state"] == "failing" else None

        error = await eventually(reload_failing, 10, "the reload task to show the failed HeadObject")
        assert f"s3://{bucket}/jobs.csv" in error and "404" in error
        assert sorted(engine.jobs) == ["spike-sort"]  # the definitions in force stay
        await asyncio.to_thread(put, s3, bucket, "jobs.csv", HEADER + OTHER_ROW)
        await eventually(lambda: sorted(engine.jobs) == ["summarize"], 15, "the file once it is back")
    finally:
        await engine.stop()


async def test_yaml_in_s3_and_local_files_together(tmp_path: Path, s3: Any) -> None:
    bucket = unique_name("jw-jobs")
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    yaml_text = "jobs:\n  - name: nightly\n    triggers: [api]\n    target: {type: local, command: [echo, hi]}\n"
    await asyncio.to_thread(put, s3, bucket, "defs/jobs.yaml", yaml_text)
    local = tmp_path / "jobs.csv"
    local.write_text(HEADER + SEED_ROW)
    s = settings(tmp_path, f"s3://{bucket}/defs/jobs.yaml", str(local), reload=False)
    assert s.jobs == [S3Url(bucket=bucket, key="defs/jobs.yaml"), local]
    engine = Engine(s)
    await engine.start()
    try:
        assert sorted(engine.jobs) == ["nightly", "spike-sort"]
        assert engine.jobs["nightly"].origin == f"file:s3://{bucket}/defs/jobs.yaml"
        assert "jobwire-reload" not in {h.name for h in engine.supervisor.health()}
    finally:
        await engine.stop()


async def test_an_unreadable_file_at_start_is_one_line_naming_it(
    tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.aws import _free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    url = f"s3://{unique_name('jw-away')}/services/jobs.csv"
    engine = Engine(settings(tmp_path, url))
    with pytest.raises(JobFileError) as info:
        await engine.start()
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{url}: cannot read it from S3 (EndpointConnectionError")
    assert "check the bucket and key in JOBWIRE_JOBS" in line and "s3:GetObject" in line


def test_jobwire_serve_reads_jobs_csv_from_s3(tmp_path: Path, moto: MotoServer) -> None:  # noqa: F811
    """As seed 004 runs it: `JOBWIRE_JOBS=s3://…/jobs.csv jobwire serve`; an edit uploaded to S3
    is followed; a bucket that does not exist stops the start with one line naming the URL."""
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = unique_name("jw-serve")
    client.create_bucket(Bucket=bucket)
    put(client, bucket, "services/jobs.csv", HEADER + SEED_ROW)
    url = f"s3://{bucket}/services/jobs.csv"
    env = {**moto.env, "JOBWIRE_MQTT_URL": "mqtt://127.0.0.1:9"}
    srv = Server(tmp_path / "data", None, JOBWIRE_JOBS=url, **env).start()
    try:

        def names() -> list[str]:
            body = httpx.get(f"{srv.url}/api/v1/jobs", timeout=5).json()
            return sorted(j["name"] for j in body["items"])

        assert names() == ["spike-sort"]
        put(client, bucket, "services/jobs.csv", HEADER + OTHER_ROW)
        eventually_sync(lambda: names() == ["summarize"], 20, "serve to follow the upload")
    finally:
        assert srv.stop() == 0

    missing = f"s3://{unique_name('jw-none')}/services/jobs.csv"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBWIRE_", "AWS_"))}
    run_env.update(env, JOBWIRE_JOBS=missing, JOBWIRE_DATA_DIR=str(tmp_path / "data2"), JOBWIRE_PORT="0")
    done = subprocess.run(
        [sys.executable, "-m", "jobwire", "serve"], env=run_env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith(missing)]
    assert len(errors) == 1, done.stderr
    assert "cannot read it from S3 (NoSuchBucket" in errors[0] and "JOBWIRE_JOBS" in errors[0]


async def test_a_file_too_large_or_not_utf8_is_refused_at_start(
    tmp_path: Path, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobwire.engine.s3jobs

    monkeypatch.setattr(jobwire.engine.s3jobs, "MAX_FILE_BYTES", 2 * 1024 * 1024)
    bucket = unique_name("jw-jobs")
    await asyncio.to_thread(s3.create_bucket, Bucket=bucket)
    await asyncio.to_thread(put, s3, bucket, "big.csv", HEADER + "#" * (2 * 1024 * 1024))
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key="latin1.csv", Body=b"job_name\n\xe9t\xe9\n")
    engine = Engine(settings(tmp_path, f"s3://{bucket}/big.csv", f"s3://{bucket}/latin1.csv"))
    with pytest.raises(JobFileError) as info:
        await engine.start()
    big, latin1 = str(info.value).splitlines()
    assert big == f"s3://{bucket}/big.csv: larger than 2 MiB, the most a job file may be: split the jobs into several files"
    assert latin1 == f"s3://{bucket}/latin1.csv: not UTF-8 (byte offset 9): save the file as UTF-8"
