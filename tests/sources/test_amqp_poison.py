"""Poison messages in a stream (1 in 100) are dead-lettered with their reason while the rest flow:
every good message exactly one run, every poison one `invalid` event and one dead letter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import EventOutcome, Job
from jobwire.store import EventQuery, RunQuery
from tests.support.brokers import RABBIT, RabbitVhost, need
from tests.support.waiting import eventually

N = 500


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    need(RABBIT, "RabbitMQ")
    v = RabbitVhost()
    yield v
    v.delete()


def body(i: int) -> bytes:
    if i % 100 == 37:
        return b"\xff\xfe not json" if i % 200 == 37 else json.dumps({"n": [i]}).encode()  # bytes / bad type
    return json.dumps({"n": str(i)}).encode()


async def test_one_in_a_hundred_poisoned_the_rest_flow(
    vhost: RabbitVhost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBWIRE_AMQP_URL", vhost.url)
    monkeypatch.setenv("JOBWIRE_AMQP_INTAKE", "false")
    conn = await aio_pika.connect(vhost.url)
    channel = await conn.channel(publisher_confirms=True)
    await channel.declare_queue("work.q", durable=True)
    for i in range(N):
        await channel.default_exchange.publish(aio_pika.Message(body(i), message_id=f"m-{i}"), routing_key="work.q")
    engine = Engine(Settings(_env_file=None, data_dir=tmp_path / "d", shutdown_grace=timedelta(seconds=1)))
    await engine.start()
    try:
        job = {
            "name": "work",
            "triggers": [{"amqp": {"queue": "work.q"}}],
            "parameters": [{"name": "n", "type": "string"}],
            "concurrency": {"policy": "queue", "max_running": 1},
            "target": {"type": "local", "command": ["true"]},
        }
        await engine.put_job(Job.model_validate(job))
        poisoned = [i for i in range(N) if i % 100 == 37]

        async def all_recorded() -> Any:
            events = (await engine.store.list_events(EventQuery(limit=1000))).items
            return events if len(events) >= N else None

        events = await eventually(all_recorded, 60, f"{N} events")
        invalid = [e for e in events if e.outcome == EventOutcome.invalid]
        assert len(invalid) == len(poisoned) and all(e.reason for e in invalid)
        runs = (await engine.store.list_runs(RunQuery(job="work", limit=1000))).items
        assert sorted(int(r.params["n"]) for r in runs) == [i for i in range(N) if i not in poisoned]
        dead = await channel.get_queue("jobwire.dead")
        reasons = []
        while (m := await dead.get(fail=False)) is not None:
            reasons.append(str(m.headers["x-jobwire-reason"]))
            await m.ack()
        assert len(reasons) == len(poisoned)
        assert any("not valid JSON" in r for r in reasons) and any("'n'" in r for r in reasons)
    finally:
        await engine.stop()
        await conn.close()
