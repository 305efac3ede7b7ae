"""The source contract suite: every source kind passes it unchanged, against its real broker and
a real engine (SQLite store, local processes that append to a file — every run one execution).

  * a message becomes exactly one run (and one execution);
  * a redelivered message (same message id) becomes a recorded `duplicate`, not a second run;
  * a poison message is dead-lettered with its reason, recorded `invalid`, and the next good one runs;
  * a broker restart (every connection dropped) mid-burst loses nothing and doubles nothing.

To add a kind: write a harness (below) and add ONE line to `HARNESSES`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import EventOutcome, Job, RunState
from jobwire.store import EventQuery, RunQuery
from tests.support.aws import aws_env, moto  # noqa: F401 - fixtures of the sqs and s3 harnesses
from tests.support.brokers import RABBIT, RabbitVhost, need
from tests.support.waiting import eventually


class Harness(Protocol):
    kind: str
    env: dict[str, str]
    twice: bool
    """Whether the broker may hand one message over twice without a fault (SQS: at least once)."""
    """Settings for the kind's section (set in the environment before the engine starts)."""

    def trigger(self) -> dict[str, Any]: ...
    async def publish(self, body: bytes, key: str) -> None: ...
    async def dead_letters(self) -> list[tuple[bytes, str]]:
        """(body, reason) of every message dead-lettered so far."""
        ...
    async def drop_connections(self) -> None: ...


# --------------------------------------------------------------------------- amqp


class AmqpHarness:
    kind = "amqp"
    twice = False

    def __init__(self, vhost: RabbitVhost) -> None:
        import aio_pika

        self._aio_pika = aio_pika
        self.vhost = vhost
        self.queue = f"contract.{uuid.uuid4().hex[:8]}"
        self.dead = f"{self.queue}.dead"
        self.env = {
            "JOBWIRE_AMQP_URL": vhost.url,
            "JOBWIRE_AMQP_INTAKE": "false",
            "JOBWIRE_AMQP_DEAD_LETTER_EXCHANGE": self.dead,
        }
        self._conn: Any = None
        self._dead: list[tuple[bytes, str]] = []

    async def open(self) -> None:
        self._conn = await self._aio_pika.connect(self.vhost.url)
        self._channel = await self._conn.channel(publisher_confirms=True)
        await self._channel.declare_queue(self.queue, durable=True)  # before anything is published

    async def close(self) -> None:
        await self._conn.close()

    def trigger(self) -> dict[str, Any]:
        return {"type": "amqp", "queue": self.queue, "prefetch": 64}

    async def publish(self, body: bytes, key: str) -> None:
        message = self._aio_pika.Message(body, message_id=key, delivery_mode=self._aio_pika.DeliveryMode.PERSISTENT)
        await self._channel.default_exchange.publish(message, routing_key=self.queue)

    async def dead_letters(self) -> list[tuple[bytes, str]]:
        try:
            queue = await self._channel.get_queue(self.dead, ensure=True)
        except Exception:
            return self._dead
        while (message := await queue.get(fail=False)) is not None:
            self._dead.append((message.body, str((message.headers or {}).get("x-jobwire-reason"))))
            await message.ack()
        return self._dead

    async def drop_connections(self) -> None:
        await asyncio.to_thread(self.vhost.close_connections)
        # the harness's own connection went too
        await self.open()


@pytest.fixture(scope="module")
def rabbit_vhost() -> Any:
    need(RABBIT, "RabbitMQ")
    vhost = RabbitVhost()
    yield vhost
    vhost.delete()


@asynccontextmanager
async def amqp_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    harness = AmqpHarness(request.getfixturevalue("rabbit_vhost"))
    await harness.open()
    try:
        yield harness
    finally:
        await harness.close()


# --------------------------------------------------------------------------- mqtt


class MqttHarness:
    """A private mosquitto per test (so `drop_connections` can restart the broker itself), the
    message id as an MQTT 5 user property the trigger names as its event key."""

    kind = "mqtt"
    twice = False

    def __init__(self, broker: Any) -> None:
        from tests.support.mqtt import unique

        self.broker = broker
        self.prefix = f"jwtest/{uuid.uuid4().hex[:12]}"
        self.client_id = unique("jwtest-contract")
        self.env = {
            "JOBWIRE_MQTT_URL": broker.url,
            "JOBWIRE_MQTT_CLIENT_ID": self.client_id,
            "JOBWIRE_MQTT_STATUS_PREFIX": f"{self.prefix}/svc",
            "JOBWIRE_MQTT_SINK": "false",
        }
        self._pub: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._dead: list[tuple[bytes, str]] = []

    async def open(self) -> None:
        from tests.support.mqtt import publisher

        self._pub = publisher(port=self.broker.port, timeout=5)
        await self._pub.__aenter__()
        ready = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def _watch(self, ready: asyncio.Event) -> None:
        from tests.support.mqtt import publisher

        async with publisher(port=self.broker.port) as sub:
            await sub.subscribe(f"{self.prefix}/svc/dead/#", qos=1)
            ready.set()
            async for m in sub.messages:
                doc = json.loads(m.payload)  # type: ignore[arg-type]
                self._dead.append((doc["payload"].encode(), doc["reason"]))

    async def close(self) -> None:
        import contextlib

        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._pub.__aexit__(None, None, None)

    def trigger(self) -> dict[str, Any]:
        return {"type": "mqtt", "topic": f"{self.prefix}/events/+", "event_key": "message_id"}

    async def publish(self, body: bytes, key: str) -> None:
        from tests.support.mqtt import user_props

        await self._pub.publish(f"{self.prefix}/events/x", body, qos=1, properties=user_props(message_id=key))

    async def dead_letters(self) -> list[tuple[bytes, str]]:
        return self._dead

    async def drop_connections(self) -> None:
        await self.close()
        await self.broker.restart()  # every connection dropped; sessions and queued messages kept
        await self.open()


@asynccontextmanager
async def mqtt_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    from tests.support.mqtt import PrivateMosquitto

    broker = await PrivateMosquitto(request.getfixturevalue("tmp_path") / "mosquitto").start()
    harness = MqttHarness(broker)
    try:
        await harness.open()
        yield harness
    finally:
        await harness.close()
        await broker.stop()


# --------------------------------------------------------------------------- sqs and s3 (moto)


class SqsHarness:
    """moto's server over HTTP, jobwire reaching SQS through a proxy whose connections
    `drop_connections` cuts (moto keeps its state: a real "restart" of moto would forget the
    queue). The message id travels as a message attribute the trigger names as its event key."""

    kind = "sqs"
    twice = True
    """SQS delivers at least once, and moto's server can answer two pollers' concurrent receives
    with the same message (seen once in this suite: a poison message recorded invalid twice)."""

    def __init__(self, proxy: Any) -> None:
        from tests.support.aws import unique_name

        self.proxy = proxy
        self.queue = unique_name("contract")
        self.env = {"JOBWIRE_SQS_ENDPOINT_URL": proxy.url}
        self._dead: list[tuple[bytes, str]] = []
        self._stack: Any = None

    async def open(self) -> None:
        import contextlib

        from tests.support.awsio import client

        self._stack = contextlib.AsyncExitStack()
        self.sqs = await self._stack.enter_async_context(client("sqs"))
        self.url = str((await self.sqs.create_queue(QueueName=self.queue))["QueueUrl"])

    async def close(self) -> None:
        await self._stack.aclose()

    def trigger(self) -> dict[str, Any]:
        return {"type": "sqs", "queue": self.queue, "event_key": "message_id", "visibility_timeout": 5}

    async def publish(self, body: bytes, key: str) -> None:
        attrs = {"message_id": {"DataType": "String", "StringValue": key}}
        await self.sqs.send_message(QueueUrl=self.url, MessageBody=body.decode(), MessageAttributes=attrs)

    async def dead_letters(self) -> list[tuple[bytes, str]]:
        from jobwire.sources.sqs.spec import dead_letter_name

        try:
            dlq = str((await self.sqs.get_queue_url(QueueName=dead_letter_name(self.queue)))["QueueUrl"])
        except Exception:
            return self._dead
        got = await self.sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        for m in got.get("Messages") or []:
            self._dead.append((m["Body"].encode(), m["MessageAttributes"]["jobwire-reason"]["StringValue"]))
            await self.sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
        return self._dead

    async def drop_connections(self) -> None:
        self.proxy.cut()  # every connection closed; new ones refused until enough retries failed
        # past every retry of the calls in flight — two pollers' receives, the deletes or visibility
        # changes of up to two more batches (pipelined), the backlog reader: 5 × 3 attempts — and
        # of a restart's first call
        await eventually(lambda: self.proxy.refused >= 20, 60, "jobwire to find SQS unreachable and restart")
        self.proxy.mend()


class S3Harness(SqsHarness):
    """Uploads to a bucket S3 notifies the queue of; the trigger's key pattern makes `n` a
    parameter and the object's content is the message id (same id, same ETag: a redelivery).
    A body that is not a good message cannot be an upload: it is sent to the queue as it is (a
    message that is not an S3 event notification)."""

    kind = "s3"

    def __init__(self, proxy: Any) -> None:
        from tests.support.aws import unique_name

        super().__init__(proxy)
        self.bucket = unique_name("contract")
        self.env = {"JOBWIRE_S3_SQS_ENDPOINT_URL": proxy.url, "JOBWIRE_S3_INTAKE": "false"}

    async def open(self) -> None:
        from tests.support.awsio import client

        await super().open()
        self.s3 = await self._stack.enter_async_context(client("s3"))

    def trigger(self) -> dict[str, Any]:
        return {
            "type": "s3",
            "bucket": self.bucket,
            "queue": self.queue,
            "key_pattern": "contract/(?P<n>[^/]+)",
            "visibility_timeout": 5,
        }

    async def publish(self, body: bytes, key: str) -> None:
        try:
            n = json.loads(body).get("n")
        except ValueError:
            n = None
        if isinstance(n, str):
            await self.s3.put_object(Bucket=self.bucket, Key=f"contract/{n}", Body=key.encode())
        else:
            await self.sqs.send_message(QueueUrl=self.url, MessageBody=body.decode())


def _aws_harness(cls: type[SqsHarness]) -> Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Harness]]:
    @asynccontextmanager
    async def make(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
        from urllib.parse import urlsplit

        from tests.support.awsio import CuttableProxy

        env = request.getfixturevalue("aws_env")
        target = urlsplit(env["AWS_ENDPOINT_URL"])
        proxy = await CuttableProxy(target.hostname or "127.0.0.1", target.port or 80).start()
        harness = cls(proxy)
        await harness.open()
        try:
            yield harness
        finally:
            await harness.close()
            await proxy.close()

    return make


sqs_harness, s3_harness = _aws_harness(SqsHarness), _aws_harness(S3Harness)


HARNESSES: dict[str, Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[Harness]]] = {
    "amqp": amqp_harness,
    "mqtt": mqtt_harness,
    "sqs": sqs_harness,
    "s3": s3_harness,
}


# --------------------------------------------------------------------------- the suite


@pytest.fixture(params=list(HARNESSES))
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    async with HARNESSES[request.param](request) as h:
        yield h


class World:
    def __init__(self, engine: Engine, executions: Path) -> None:
        self.engine = engine
        self.executions = executions

    def executed(self) -> list[str]:
        return self.executions.read_text().split() if self.executions.exists() else []

    async def runs(self) -> list[Any]:
        return (await self.engine.store.list_runs(RunQuery(job="contract", limit=1000))).items

    async def events(self) -> list[Any]:
        return (await self.engine.store.list_events(EventQuery(limit=1000))).items

    async def settled(self, n: int, timeout: float = 30) -> None:
        """`n` runs recorded, all finished, and `n` executions."""

        async def check() -> bool:
            runs = await self.runs()
            return len(runs) >= n and all(r.state.terminal for r in runs) and len(self.executed()) >= n

        await eventually(check, timeout, f"{n} runs to finish")


@pytest.fixture
async def world(harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    for k, v in harness.env.items():
        monkeypatch.setenv(k, v)
    executions = tmp_path / "executions"
    engine = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await engine.start()
    append = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    job = Job.model_validate(
        {
            "name": "contract",
            "triggers": [harness.trigger()],
            "parameters": [{"name": "n", "type": "string"}],
            "target": {"type": "local", "command": [sys.executable, "-c", append, str(executions), "{{n}}"]},
        }
    )
    await engine.put_job(job)
    await eventually(
        lambda: any(s["connected"] for s in engine.health()["sources"]), 20, "the source to connect"
    )
    try:
        yield World(engine, executions)
    finally:
        await engine.stop()


def body(n: int | str) -> bytes:
    return json.dumps({"n": str(n)}).encode()


async def test_a_message_becomes_exactly_one_run(harness: Harness, world: World) -> None:
    await harness.publish(body(1), "m-1")
    await world.settled(1)
    runs = await world.runs()
    assert len(runs) == 1 and runs[0].state == RunState.succeeded and runs[0].params == {"n": "1"}
    assert world.executed() == ["1"]
    events = await world.events()
    assert [(e.source, e.outcome) for e in events] == [(harness.kind, EventOutcome.run)]


async def test_a_redelivered_message_is_a_recorded_duplicate(harness: Harness, world: World) -> None:
    await harness.publish(body(7), "same-id")
    await world.settled(1)
    await harness.publish(body(7), "same-id")

    async def two_events() -> bool:
        return len(await world.events()) == 2

    await eventually(two_events, 20, "the redelivery to be recorded")
    outcomes = sorted(e.outcome.value for e in await world.events())
    assert outcomes == ["duplicate", "run"]
    assert len(await world.runs()) == 1 and world.executed() == ["7"]


async def test_a_poison_message_is_dead_lettered_with_its_reason_and_the_next_runs(
    harness: Harness, world: World
) -> None:
    await harness.publish(b"{this is not json", "poison-1")
    await harness.publish(json.dumps({"n": {"not": "a string"}}).encode(), "poison-2")
    await harness.publish(body(2), "good-2")
    await world.settled(1)

    async def two_dead() -> list[tuple[bytes, str]]:
        dead = await harness.dead_letters()
        return dead if len(dead) >= 2 else []

    dead = await eventually(two_dead, 20, "both poison messages in the dead-letter place")
    reasons = {b: r for b, r in dead}
    assert "not valid JSON" in reasons[b"{this is not json"]
    assert "'n'" in reasons[json.dumps({"n": {"not": "a string"}}).encode()]
    invalid = [e for e in await world.events() if e.outcome == EventOutcome.invalid]
    assert all(e.reason for e in invalid)
    kinds = sorted("json" if "not valid JSON" in (e.reason or "") else "param" for e in invalid)
    if harness.twice:  # each recorded invalid at least once; no run comes of a second copy either
        assert set(kinds) == {"json", "param"}, kinds
    else:
        assert kinds == ["json", "param"]
    assert world.executed() == ["2"]


async def test_dropped_connections_mid_burst_lose_and_double_nothing(harness: Harness, world: World) -> None:
    total = 300
    for n in range(total // 2):
        await harness.publish(body(n), f"burst-{n}")
    await harness.drop_connections()
    for n in range(total // 2, total):
        await harness.publish(body(n), f"burst-{n}")
    await world.settled(total, timeout=90)
    runs = await world.runs()
    assert sorted(int(r.params["n"]) for r in runs) == list(range(total)), "every message exactly one run"
    assert sorted(map(int, world.executed())) == list(range(total)), "every run exactly one execution"
    health = world.engine.health()
    task = next(t for t in health["tasks"] if t["task"].startswith("jobwire-source-"))
    assert task["restarts"] >= 1, "the source lost its connection and was restarted"
    await eventually(
        lambda: next(s for s in world.engine.health()["sources"] if s["kind"] == harness.kind)["connected"],
        20,
        "the source to be connected again",
    )
