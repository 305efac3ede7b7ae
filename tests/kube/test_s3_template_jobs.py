"""Seed 000 through S3 (`JOBWIRE_TEMPLATE_JOBS=true`, `BUCKET_NAME` / `SQS_QUEUE_NAME`): a file
`ENVIRONMENT/JOB-NAME/FILE` landing in the bucket (moto's server over HTTP) for a job that is not
defined launches the Kubernetes Job template of that name (the Kubernetes emulator); a name with
no template is recorded invalid (TemplateNotFound) and its message dead-lettered to `<queue>-dlq`;
and seed 000 whole, with `BROKER_URL` set: file in S3 → template Job → its status documents on
RabbitMQ in the seed's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import CronJob

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import EventOutcome, RunState
from jobwire.sources.sqs.source import REASON_ATTRIBUTE
from jobwire.sources.sqs.spec import dead_letter_name
from jobwire.store import EventQuery, RunQuery
from tests.kube.test_template_jobs import NS, TEMPLATE
from tests.sources.test_amqp_status import status_queue
from tests.support.aws import aws_env, moto, unique_name  # noqa: F401 - fixtures
from tests.support.awsio import client, queue_url
from tests.support.brokers import RABBIT, RabbitVhost, need
from tests.support.kubeemu import KubeEmulator
from tests.support.waiting import eventually

pytestmark = pytest.mark.usefixtures("aws_env")


def seed000_settings(kube_kubeconfig: Path, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "d",
        kubeconfig=kube_kubeconfig,
        kube_namespace=NS,
        kube_cleanup_interval=timedelta(0),
        shutdown_grace=timedelta(seconds=0.2),
        template_jobs=True,
    )


@pytest.fixture
async def engine(
    kube_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Engine, str, str]]:
    bucket, queue = unique_name("seed000"), unique_name("seed000")
    monkeypatch.setenv("BUCKET_NAME", bucket)
    monkeypatch.setenv("SQS_QUEUE_NAME", queue)
    eng = Engine(seed000_settings(kube_kubeconfig, tmp_path))
    await eng.start()
    await eventually(lambda: any(s["connected"] for s in eng.health()["sources"]), 30, "the s3 source")
    yield eng, bucket, queue
    await eng.stop()


async def test_a_file_for_an_undefined_job_runs_its_template(
    engine: tuple[Engine, str, str], kube: KubeEmulator, kube_kubeconfig: Path
) -> None:
    eng, bucket, _ = engine
    k8s = AsyncClient(KubeConfig.from_file(kube_kubeconfig))
    await k8s.create(CronJob.from_dict(TEMPLATE))
    await k8s.close()
    async with client("s3") as s3:
        await s3.put_object(Bucket=bucket, Key="test/convert/input file.csv", Body=b"a,b\n")

    async def finished() -> Any:
        runs = (await eng.store.list_runs(RunQuery(job="convert"))).items
        return runs[0] if runs and runs[0].state.terminal else None

    run = await eventually(finished, 30, "the template's run to finish")
    assert run.state == RunState.succeeded, run.error
    assert run.input_location == "test/convert/input file.csv" and run.environment == "test"
    assert eng.get_job("convert").origin == "template"
    log = b"".join([c async for c in eng.run_log(run.id)]).decode()
    assert "converting test/convert/input file.csv" in log


async def test_a_file_for_a_name_without_a_template_is_invalid_and_dead_lettered(
    engine: tuple[Engine, str, str], kube: KubeEmulator
) -> None:
    eng, bucket, queue = engine
    async with client("s3") as s3, client("sqs") as sqs:
        await s3.put_object(Bucket=bucket, Key="test/nothing-here/input.csv", Body=b"x")

        async def invalid() -> Any:
            events = (await eng.store.list_events(EventQuery(outcomes=[EventOutcome.invalid]))).items
            return events[0] if events else None

        event = await eventually(invalid, 30, "the event to be recorded invalid")
        assert event.reason.startswith("TemplateNotFound:") and "nothing-here" in event.reason
        dlq = await queue_url(sqs, dead_letter_name(queue))

        async def dead() -> list[Any]:
            got = await sqs.receive_message(QueueUrl=dlq, MessageAttributeNames=["All"])
            return got.get("Messages") or []

        [message] = await eventually(dead, 15, "the dead-lettered notification")
        assert message["MessageAttributes"][REASON_ATTRIBUTE]["StringValue"].startswith("TemplateNotFound")


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    need(RABBIT, "RabbitMQ")
    v = RabbitVhost()
    yield v
    v.delete()


async def test_seed000_whole_file_in_s3_template_job_status_on_rabbitmq(
    kube: KubeEmulator, kube_kubeconfig: Path, tmp_path: Path, vhost: RabbitVhost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 000 configured by its own variables (BUCKET_NAME, SQS_QUEUE_NAME, BROKER_URL, NAMESPACE
    via the settings): a file lands in S3, the template Job of the name in its key runs in the
    namespace, and every state change is on RabbitMQ in the seed's status shape."""
    bucket, queue = unique_name("seed000"), unique_name("seed000")
    monkeypatch.setenv("BUCKET_NAME", bucket)
    monkeypatch.setenv("SQS_QUEUE_NAME", queue)
    monkeypatch.setenv("BROKER_URL", vhost.url)
    conn, statuses = await status_queue(vhost.url)
    k8s = AsyncClient(KubeConfig.from_file(kube_kubeconfig))
    await k8s.create(CronJob.from_dict(TEMPLATE))
    await k8s.close()
    eng = Engine(seed000_settings(kube_kubeconfig, tmp_path))
    await eng.start()
    try:
        await eventually(
            lambda: any(s["connected"] and s["kind"] == "s3" for s in eng.health()["sources"]), 30, "the s3 source"
        )
        async with client("s3") as s3:
            await s3.put_object(Bucket=bucket, Key="prod/convert/input.csv", Body=b"a,b\n")
        docs = await until_succeeded(statuses)
    finally:
        await eng.stop()
        await conn.close()
    keys = [key for key, _ in docs]
    assert keys[0] == "convert.pending" and keys[-1] == "convert.succeeded", keys
    assert "convert.running" in keys and set(keys) <= {"convert.pending", "convert.running", "convert.succeeded"}
    assert len({d["run_id"] for _, d in docs}) == 1, "one run"
    last = docs[-1][1]
    assert last["name"] == "convert" and last["action"] == "succeeded"
    assert last["input_location"] == "prod/convert/input.csv" and last["environment"] == "prod"
    assert last["status"]["succeeded"] == 1 and last["status"]["completionTime"]


async def until_succeeded(queue: Any) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []

    async def more() -> bool:
        while (m := await queue.get(fail=False)) is not None:
            got.append((m.routing_key, json.loads(m.body)))
            await m.ack()
        return any(key.endswith(".succeeded") for key, _ in got)

    await eventually(more, 60, "the run's succeeded document on RabbitMQ")
    return got
