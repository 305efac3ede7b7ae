"""Status documents on RabbitMQ (seed 000): every state change, persistent, with publisher
confirms, to the topic exchange `jobwire.status` with routing key `<job>.<action>` — through the
outbox, so documents from while the broker was unreachable (or jobwire restarted meanwhile) arrive
afterwards, in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job
from tests.support.brokers import RABBIT, RabbitVhost, need, rabbitmqctl
from tests.support.waiting import eventually


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    need(RABBIT, "RabbitMQ")
    v = RabbitVhost()
    yield v
    v.delete()


async def status_queue(url: str) -> Any:
    """A queue bound to every status document (declared before jobwire publishes anything)."""
    import aio_pika

    conn = await aio_pika.connect(url)
    channel = await conn.channel()
    exchange = await channel.declare_exchange("jobwire.status", aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("status.all", durable=True)
    await queue.bind(exchange, routing_key="#")
    return conn, queue


async def drain(queue: Any, n: int) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []

    async def more() -> bool:
        while (m := await queue.get(fail=False)) is not None:
            got.append((m.routing_key, json.loads(m.body)))
            await m.ack()
        return len(got) >= n

    await eventually(more, 30, f"{n} status documents on RabbitMQ")
    return got


def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2))


@pytest.fixture
def amqp_env(vhost: RabbitVhost, monkeypatch: pytest.MonkeyPatch) -> RabbitVhost:
    monkeypatch.setenv("BROKER_URL", vhost.url)  # seed 000's variable
    monkeypatch.setenv("JOBWIRE_AMQP_INTAKE", "false")
    return vhost


async def finished_runs(engine: Engine, ids: list[str]) -> None:
    async def check() -> bool:
        runs = [await engine.get_run(i) for i in ids]
        return all(r.state.terminal for r in runs)

    await eventually(check, 20, "the runs to finish")


@pytest.fixture
async def engine(tmp_path: Path, amqp_env: RabbitVhost) -> AsyncIterator[Engine]:
    eng = Engine(settings(tmp_path))
    await eng.start()
    yield eng
    await eng.stop()


async def test_every_state_change_is_published_with_job_and_action_as_routing_key(
    tmp_path: Path, vhost: RabbitVhost, amqp_env: RabbitVhost
) -> None:
    conn, queue = await status_queue(vhost.url)
    engine = Engine(settings(tmp_path))
    await engine.start()
    try:
        params = [{"name": "input_location"}, {"name": "environment", "default": "test"}]
        job = {"name": "convert", "target": {"type": "local", "command": ["true"]}, "parameters": params}
        await engine.put_job(Job.model_validate(job))
        adm = await engine.trigger("convert", {"input_location": "test/convert/input.csv"})
        assert adm.run is not None
        docs = await drain(queue, 3)
    finally:
        await engine.stop()
        await conn.close()
    assert [key for key, _ in docs] == ["convert.pending", "convert.running", "convert.succeeded"]
    last = docs[-1][1]
    assert last["name"] == "convert" and last["action"] == "succeeded" and last["run_id"] == adm.run.id
    assert last["input_location"] == "test/convert/input.csv" and last["environment"] == "test"
    assert last["status"]["succeeded"] == 1 and last["status"]["completionTime"]


async def test_documents_wait_in_the_outbox_while_the_broker_is_away_and_arrive_in_order(
    tmp_path: Path, vhost: RabbitVhost, amqp_env: RabbitVhost
) -> None:
    conn, queue = await status_queue(vhost.url)
    await asyncio.to_thread(rabbitmqctl, "clear_permissions", "-p", vhost.name, "guest")  # the broker says no
    engine = Engine(settings(tmp_path))
    await engine.start()
    try:
        await engine.put_job(Job.model_validate({"name": "w", "target": {"type": "local", "command": ["true"]}}))
        ids = []
        for _ in range(5):
            adm = await engine.trigger("w", {})
            assert adm.run is not None
            ids.append(adm.run.id)
        await finished_runs(engine, ids)
        await eventually(lambda: engine.relays["amqp"].pending == 15, 10, "15 documents in the outbox")
        relay_task = next(t for t in engine.health()["tasks"] if t["task"] == "jobwire-outbox-amqp")
        await eventually(
            lambda: next(t for t in engine.health()["tasks"] if t["task"] == "jobwire-outbox-amqp")["last_error"],
            10,
            "the relay to report the broker refusing",
        )
        assert relay_task["critical"] is False
    finally:
        await engine.stop()  # with the documents still in the outbox
    await asyncio.to_thread(rabbitmqctl, "set_permissions", "-p", vhost.name, "guest", ".*", ".*", ".*")
    again = Engine(settings(tmp_path))
    await again.start()
    try:
        docs = await drain(queue, 15)
        await eventually(lambda: again.relays["amqp"].pending == 0, 10, "the outbox to empty")
    finally:
        await again.stop()
        await conn.close()
    assert len(docs) == 15, "each document exactly once"
    for run_id in ids:
        actions = [d["action"] for _, d in docs if d["run_id"] == run_id]
        assert actions == ["pending", "running", "succeeded"], f"in order per run: {actions}"
