"""Benchmark rows for the `amqp` source, measured the way users run it: `jobwire serve` as a
process, RabbitMQ on this machine, a private vhost.

* publish → run started: a message published to the job's queue (clock starts just before the
  publish), the run's recorded `started_at` (the local process `date` was spawned) — sequential,
  paced 25 ms apart;
* sustained intake: N messages waiting in one queue, consumed with acknowledgements after commit;
  runs recorded per second between the first and the last run's `created_at` (queued behind one
  running job: the row measures intake and durable recording, not process spawning).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench_core import Ctx, Row


def _vhost() -> Any:
    from tests.support.brokers import RABBIT, RabbitVhost, reachable

    if not reachable(RABBIT):
        raise RuntimeError("RabbitMQ is not running on 127.0.0.1:5672 (make services starts it)")
    return RabbitVhost()


async def _channel(url: str, confirms: bool) -> tuple[Any, Any]:
    import aio_pika

    conn = await aio_pika.connect(url)
    return conn, await conn.channel(publisher_confirms=confirms)


def amqp_to_start(ctx: Ctx) -> list[Row]:
    import aio_pika

    from bench.bench_core import latency_row, runs_started_after, settle, summary
    from jobwire.model import run_id_for
    from tests.support.server import Server

    n, warm, gap = (100, 10, 0.025) if ctx.quick else (500, 30, 0.025)
    base = ctx.tmp / "amqp-latency"
    base.mkdir()
    vhost = _vhost()
    try:
        jobs = base / "jobs.yaml"
        jobs.write_text(
            "jobs:\n  - name: amqp-date\n    triggers: [{amqp: {queue: bench.latency}}]\n"
            "    target: {type: local, command: [date, '+%s.%N']}\n"
        )
        settle(ctx)
        env = {"JOBWIRE_AMQP_URL": vhost.url, "JOBWIRE_AMQP_INTAKE": "false"}
        with Server(base / "data", jobs, **env) as srv:
            ctx.progress(f"{warm} warm-up + {n} sequential publishes, 25 ms apart")

            async def publish_all() -> dict[str, float]:
                conn, channel = await _channel(vhost.url, confirms=False)
                sent: dict[str, float] = {}
                async with conn:
                    await channel.declare_queue("bench.latency", durable=True)
                    for i in range(warm + n):
                        mid = f"lat-{i}"
                        message = aio_pika.Message(b"{}", message_id=mid)
                        t0 = time.time()
                        await channel.default_exchange.publish(message, routing_key="bench.latency")
                        if i >= warm:
                            sent[run_id_for(f"amqp-date/amqp/{mid}")] = t0
                        rest = t0 + gap - time.time()
                        if rest > 0:
                            await asyncio.sleep(rest)
                return sent

            started, failed = runs_started_after(srv, asyncio.run(publish_all()))
    finally:
        vhost.delete()
    ctx.data["amqp_latency"] = {"publish_to_started_at": summary(started), "failed_runs": failed}
    return [latency_row("AMQP publish → run started_at (p50 / p99), local target", started, failed, 3, 10)]


SINK = (
    "jobs:\n  - name: amqp-sink\n    triggers: [{amqp: {queue: bench.intake, prefetch: 2000}}]\n"
    "    concurrency: {policy: queue, max_running: 1}\n"
    "    target: {type: local, command: [sleep, '3600']}\n"
)


def amqp_throughput(ctx: Ctx) -> list[Row]:
    import aio_pika

    from bench.bench_core import Row, db_rows, settle
    from tests.support.server import Server

    total = 5000 if ctx.quick else 20000
    base = ctx.tmp / "amqp-intake"
    base.mkdir()
    vhost = _vhost()
    try:
        jobs = base / "jobs.yaml"
        jobs.write_text(SINK)

        async def preload() -> None:
            conn, channel = await _channel(vhost.url, confirms=True)
            async with conn:
                await channel.declare_queue("bench.intake", durable=True)
                for start in range(0, total, 500):
                    await asyncio.gather(
                        *(
                            channel.default_exchange.publish(
                                aio_pika.Message(b"{}", message_id=f"m-{i}", delivery_mode=2),
                                routing_key="bench.intake",
                            )
                            for i in range(start, min(total, start + 500))
                        )
                    )

        ctx.progress(f"{total:,} persistent messages into one queue, then jobwire serve consumes them")
        asyncio.run(preload())
        settle(ctx)
        env = {"JOBWIRE_AMQP_URL": vhost.url, "JOBWIRE_AMQP_INTAKE": "false", "JOBWIRE_SHUTDOWN_GRACE": "0.2s"}
        db = base / "data" / "jobwire.db"
        with Server(base / "data", jobs, **env):
            deadline = time.time() + 300
            count = 0
            while time.time() < deadline:
                (count,) = db_rows(db, "SELECT count(*) FROM runs WHERE job = 'amqp-sink'")[0]
                if count >= total:
                    break
                time.sleep(0.2)
        first, last = db_rows(db, "SELECT min(created_at), max(created_at) FROM runs WHERE job = 'amqp-sink'")[0]
    finally:
        vhost.delete()
    span = (_ts(last) - _ts(first)) if first and last else 0.0
    rate = (count - 1) / span if span > 0 else 0.0
    ctx.data["amqp_intake"] = {"messages": total, "runs": count, "seconds": span, "rate": rate}
    return [
        Row(
            "AMQP messages → recorded runs /s, one queue, ack after commit (queued, no spawn)",
            f"{rate:,.0f} /s ({count:,} of {total:,} runs)",
            "≥ 2,500 /s",
            rate >= 2500 and count == total,
        )
    ]


def _ts(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value) / (1e6 if value > 1e12 else 1)
    return datetime.fromisoformat(str(value)).timestamp()


def amqp_status(ctx: Ctx) -> list[Row]:
    """Status documents published with confirms per second: N documents waiting in a SQLite
    store's outbox (as after a broker outage), drained by the outbox relay into RabbitMQ."""
    from bench.bench_core import Row, run_loop, settle

    total = 5000 if ctx.quick else 20000
    vhost = _vhost()
    try:

        async def main() -> float:
            from jobwire.engine.metrics import Metrics
            from jobwire.engine.outbox import OutboxRelay
            from jobwire.model import StatusBlock, StatusDocument, utcnow
            from jobwire.sinks.amqp import AmqpSink
            from jobwire.store import OutboxRow
            from jobwire.store.sqlite import SQLiteStore

            store = SQLiteStore(f"sqlite:///{ctx.tmp / 'outbox.db'}")
            await store.open()
            doc = StatusDocument(
                name="job", action="running", status=StatusBlock(active=1), run_id="r1", event_id="e1",
                job="job", attempt=1, time=utcnow(),
            ).model_dump_json()
            for start in range(0, total, 2000):
                rows = [OutboxRow("amqp", doc) for _ in range(min(2000, total - start))]
                await store.commit([], [], rows)
            sink = AmqpSink(vhost.url, "jobwire.status", "{job}.{action}")
            relay = OutboxRelay(store, sink, Metrics())
            t0 = time.perf_counter()
            task = asyncio.create_task(relay.run())
            while await store.outbox_size("amqp"):
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sink.close()
            await store.close()
            return total / elapsed

        settle(ctx)
        ctx.progress(f"{total:,} status documents from the outbox to RabbitMQ with publisher confirms")
        rate = run_loop(main)
    finally:
        vhost.delete()
    ctx.data["amqp_status"] = {"documents": total, "rate": rate}
    return [
        Row(
            "status documents published with confirms /s (outbox → RabbitMQ)",
            f"{rate:,.0f} /s",
            "≥ 2,500 /s",
            rate >= 2500,
        )
    ]


def mqtt_to_start(ctx: Ctx) -> list[Row]:
    """MQTT publish (QoS 1, clock just before the publish) → the run's recorded `started_at`,
    through `jobwire serve` and Mosquitto on this machine; sequential, 25 ms apart."""
    import uuid

    import aiomqtt

    from bench.bench_core import latency_row, runs_started_after, settle, summary, wait_source_connected
    from jobwire.model import run_id_for
    from tests.support.server import Server

    n, warm, gap = (100, 10, 0.025) if ctx.quick else (500, 30, 0.025)
    base = ctx.tmp / "mqtt-latency"
    base.mkdir()
    topic = f"jwbench/{uuid.uuid4().hex[:8]}/go"
    jobs = base / "jobs.yaml"
    jobs.write_text(
        "jobs:\n  - name: mqtt-date\n"
        f"    triggers: [{{mqtt: {{topic: '{topic}', event_key: id}}}}]\n"
        "    parameters: [{name: id}]\n"
        "    target: {type: local, command: [date, '+%s.%N']}\n"
    )
    settle(ctx)
    env = {"JOBWIRE_MQTT_URL": "mqtt://127.0.0.1:1883", "JOBWIRE_MQTT_SINK": "false"}
    with Server(base / "data", jobs, **env) as srv:
        wait_source_connected(srv)  # the source subscribes after start
        ctx.progress(f"{warm} warm-up + {n} sequential MQTT publishes (QoS 1), 25 ms apart")

        async def publish_all() -> dict[str, float]:
            sent: dict[str, float] = {}
            async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"jwbench-{uuid.uuid4().hex[:8]}") as client:
                for i in range(warm + n):
                    key = f"lat-{i}"
                    t0 = time.time()
                    await client.publish(topic, f'{{"id": "{key}"}}', qos=1)
                    if i >= warm:
                        sent[run_id_for(f"mqtt-date/mqtt/k:{key}")] = t0
                    rest = t0 + gap - time.time()
                    if rest > 0:
                        await asyncio.sleep(rest)
            return sent

        started, failed = runs_started_after(srv, asyncio.run(publish_all()))
    ctx.data["mqtt_latency"] = {"publish_to_started_at": summary(started), "failed_runs": failed}
    return [latency_row("MQTT publish → run started_at (p50 / p99), local target", started, failed, 3, 10)]


def postgres_to_start(ctx: Ctx) -> list[Row]:
    """Seed 001: a row inserted into the `jobs` table (clock just before the INSERT) → the run's
    recorded `started_at`, through `jobwire serve` LISTENing on PostgreSQL; sequential, 25 ms apart.
    The run is found by the run id jobwire writes back into the row."""
    import subprocess
    import sys
    import uuid

    import asyncpg  # type: ignore[import-untyped]

    from bench.bench_core import latency_row, runs_started_after, settle, summary
    from tests.support.server import Server

    n, warm, gap = (100, 10, 0.025) if ctx.quick else (500, 30, 0.025)
    base = ctx.tmp / "pg-latency"
    base.mkdir()
    db = f"jwbench_{uuid.uuid4().hex[:8]}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{db}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{db}"'))
    try:

        async def schema() -> None:
            conn = await asyncpg.connect(dsn)
            await conn.execute(
                "CREATE TABLE jobs (id bigserial PRIMARY KEY, type text NOT NULL,"
                " status text NOT NULL DEFAULT 'pending', run_id text)"
            )
            await conn.close()

        asyncio.run(schema())
        subprocess.run(
            [sys.executable, "-m", "jobwire", "db", "install-trigger", "--dsn", dsn], check=True, capture_output=True
        )
        jobs = base / "jobs.yaml"
        jobs.write_text("jobs:\n  - name: pg-date\n    target: {type: local, command: [date, '+%s.%N']}\n")
        settle(ctx)
        env = {"JOBWIRE_POSTGRES_DSN": dsn, "JOBWIRE_POSTGRES_RUN_ID_COLUMN": "run_id"}
        with Server(base / "data", jobs, **env) as srv:
            ctx.progress(f"{warm} warm-up + {n} sequential INSERTs, 25 ms apart")

            async def insert_all() -> dict[int, float]:
                conn = await asyncpg.connect(dsn)
                sent: dict[int, float] = {}
                try:
                    for i in range(warm + n):
                        t0 = time.time()
                        row_id = await conn.fetchval("INSERT INTO jobs (type) VALUES ('pg-date') RETURNING id")
                        if i >= warm:
                            sent[int(row_id)] = t0
                        rest = t0 + gap - time.time()
                        if rest > 0:
                            await asyncio.sleep(rest)
                    for _ in range(200):
                        pending = await conn.fetchval("SELECT count(*) FROM jobs WHERE run_id IS NULL")
                        if not pending:
                            break
                        await asyncio.sleep(0.05)
                    rows = await conn.fetch("SELECT id, run_id FROM jobs")
                finally:
                    await conn.close()
                ids = {int(r["id"]): r["run_id"] for r in rows}
                return {ids[k]: v for k, v in sent.items() if ids.get(k)}  # type: ignore[misc]

            sent = asyncio.run(insert_all())
            started, failed = runs_started_after(srv, sent)
            failed += n - len(sent)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    ctx.data["postgres_latency"] = {"insert_to_started_at": summary(started), "failed_runs": failed}
    return [
        latency_row("row INSERT (seed 001) → run started_at (p50 / p99), local target", started, failed, 5, 15)
    ]
