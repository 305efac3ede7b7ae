"""Seed 000 without per-job definitions (`JOBWIRE_TEMPLATE_JOBS=true`): a RabbitMQ message on the
shared queue naming a job that is not defined launches the Kubernetes Job template of that name;
a name with no template is recorded invalid (TemplateNotFound) and dead-lettered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import CronJob

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import EventOutcome, RunState
from jobwire.store import EventQuery, RunQuery
from tests.support.brokers import RABBIT, RabbitVhost, need
from tests.support.kubeemu import KubeEmulator
from tests.support.waiting import eventually

NS = "default"
TEMPLATE = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "convert", "namespace": NS},
    "spec": {
        "schedule": "0 0 * * *",
        "suspend": True,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "convert",
                                "image": "lab/convert:1",
                                "command": ["sh", "-c", 'echo "converting $JOBWIRE_PARAM_INPUT_LOCATION"'],
                            }
                        ],
                    }
                },
            }
        },
    },
}


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    need(RABBIT, "RabbitMQ")
    v = RabbitVhost()
    yield v
    v.delete()


@pytest.fixture
async def engine(
    kube_kubeconfig: Path, tmp_path: Path, vhost: RabbitVhost, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Engine]:
    monkeypatch.setenv("BROKER_URL", vhost.url)
    monkeypatch.setenv("JOBWIRE_AMQP_STATUS", "false")
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "d",
        kubeconfig=kube_kubeconfig,
        kube_namespace=NS,
        kube_cleanup_interval=timedelta(0),
        shutdown_grace=timedelta(seconds=0.2),
        template_jobs=True,
    )
    eng = Engine(settings)
    await eng.start()
    await eventually(lambda: any(s["connected"] for s in eng.health()["sources"]), 20, "the shared queue")
    yield eng
    await eng.stop()


async def publish(url: str, body: dict[str, Any], message_id: str) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        message = aio_pika.Message(json.dumps(body).encode(), message_id=message_id)
        await channel.default_exchange.publish(message, routing_key="jobwire.events")


async def test_a_message_for_an_undefined_job_runs_its_template(
    engine: Engine, kube: KubeEmulator, kube_kubeconfig: Path, vhost: RabbitVhost
) -> None:
    client = AsyncClient(KubeConfig.from_file(kube_kubeconfig))
    await client.create(CronJob.from_dict(TEMPLATE))
    await client.close()
    body = {"name": "convert", "input_location": "test/convert/input.csv", "environment": "test"}
    await publish(vhost.url, body, "m-1")

    async def finished() -> Any:
        runs = (await engine.store.list_runs(RunQuery(job="convert"))).items
        return runs[0] if runs and runs[0].state.terminal else None

    run = await eventually(finished, 30, "the template's run to finish")
    assert run.state == RunState.succeeded, run.error
    assert run.input_location == "test/convert/input.csv" and run.environment == "test"
    assert engine.get_job("convert").origin == "template"
    log = b"".join([c async for c in engine.run_log(run.id)]).decode()
    assert "converting test/convert/input.csv" in log


async def test_a_name_without_a_template_is_recorded_invalid_and_dead_lettered(
    engine: Engine, kube: KubeEmulator, vhost: RabbitVhost
) -> None:
    await publish(vhost.url, {"name": "nothing-here"}, "m-2")

    async def invalid() -> Any:
        events = (await engine.store.list_events(EventQuery(outcomes=[EventOutcome.invalid]))).items
        return events[0] if events else None

    event = await eventually(invalid, 30, "the event to be recorded invalid")
    assert event.reason.startswith("TemplateNotFound:") and "nothing-here" in event.reason
    conn = await aio_pika.connect(vhost.url)
    async with conn:
        channel = await conn.channel()
        dead = await channel.get_queue("jobwire.dead")

        async def got() -> Any:
            return await dead.get(fail=False)

        message = await eventually(got, 10, "the dead-lettered message")
        assert str(message.headers["x-jobwire-reason"]).startswith("TemplateNotFound")
        await message.ack()
    with pytest.raises(Exception, match="no job named"):
        engine.get_job("nothing-here")
