"""Endpoint resolution of the AWS plugs (the AWS issue's item 5): the standard chain with its
per-service variables, and jobwire's per-kind settings above it. `AWS_ENDPOINT_URL` points at a
port where nothing listens; only the per-service variable (or jobwire's setting) points at moto's
server, so a plug that ignored it would fail to connect."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError  # type: ignore[import-untyped]

from jobwire.config import Settings
from jobwire.sinks.s3log import S3
from jobwire.sources.s3.source import S3Source, build
from jobwire.sources.s3.spec import S3Settings, global_bindings
from jobwire.targets.spot import SpotSettings, SpotTarget
from jobwire.targets.spot.ec2 import Ec2
from tests.support.aws import MotoServer, aws_env, moto, unique_name  # noqa: F401 - fixtures
from tests.support.awsio import client
from tests.support.intake import FakeIntake
from tests.support.waiting import eventually


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: connections are refused


@pytest.fixture
def dead(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    url = _dead_endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return url


async def _intake_sees_an_upload(settings: S3Settings, s3_endpoint: str) -> None:
    [source] = build(global_bindings(settings), settings)
    assert isinstance(source, S3Source)
    intake = FakeIntake()
    task = asyncio.create_task(source.run(intake))
    try:
        await eventually(lambda: source.health.connected or task.done(), 30, "the s3 source to bootstrap")
        if task.done():
            task.result()
        async with client("s3", s3_endpoint) as s3:
            await s3.put_object(Bucket=settings.bucket_name, Key="test/convert/in.csv", Body=b"x")
        await eventually(lambda: intake.incomings, 15, "the upload's event")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [i.input_location for i in intake.incomings] == ["test/convert/in.csv"]


async def test_the_dead_endpoint_is_dead(dead: str) -> None:
    """Without an override the plugs' clients go to AWS_ENDPOINT_URL, and fail there."""
    async with client("sqs") as sqs:
        with pytest.raises(EndpointConnectionError):
            await sqs.list_queues()


async def test_per_service_variables_of_the_standard_chain(
    dead: str,
    moto: MotoServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for service in ("S3", "SQS", "EC2"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", moto.url)
    bucket, queue = unique_name("b"), unique_name("q")
    settings = S3Settings(_env_file=None, JOBWIRE_S3_BUCKET=bucket, JOBWIRE_S3_QUEUE=queue)  # type: ignore[call-arg]
    await _intake_sees_an_upload(settings, moto.url)

    ec2 = Ec2(None, None)
    try:
        assert isinstance(await ec2.describe_instances(), list)
    finally:
        await ec2.close()

    logs = S3()  # the client of the s3log sink and of JOBWIRE_JOBS=s3://…
    try:
        await logs.put(bucket, "logs/probe.log", b"x", "text/plain")
        assert await logs.etag(bucket, "logs/probe.log")
    finally:
        await logs.close()


async def test_jobwire_settings_override_the_chain(
    dead: str,
    moto: MotoServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("JOBWIRE_S3_ENDPOINT_URL", "JOBWIRE_S3_SQS_ENDPOINT_URL", "JOBWIRE_SPOT_ENDPOINT_URL"):
        monkeypatch.setenv(name, moto.url)
    bucket, queue = unique_name("b"), unique_name("q")
    settings = S3Settings(_env_file=None, JOBWIRE_S3_BUCKET=bucket, JOBWIRE_S3_QUEUE=queue)  # type: ignore[call-arg]
    await _intake_sees_an_upload(settings, moto.url)

    target = SpotTarget(Settings(_env_file=None, data_dir=tmp_path / "data"), SpotSettings(_env_file=None))  # type: ignore[call-arg]
    try:
        assert isinstance(await target._client(*target._where(None)).describe_instances(), list)
    finally:
        await target.close()
