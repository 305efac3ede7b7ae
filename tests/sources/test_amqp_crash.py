"""kill -9 `jobwire serve` while it consumes a burst of 2,000 RabbitMQ messages, restart it:
every message exactly one run, no process run twice — because a message is acknowledged only
after its run is committed, and a redelivered one finds its run key taken."""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobwire.model import run_id_for
from tests.support.brokers import RABBIT, RabbitVhost, need
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

N = 2000
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    need(RABBIT, "RabbitMQ")
    v = RabbitVhost()
    yield v
    v.delete()


async def publish(url: str, queue: str, n: int) -> None:
    import aio_pika

    conn = await aio_pika.connect(url)
    async with conn:
        channel = await conn.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        for start in range(0, n, 200):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            b'{"n": "%d"}' % i, message_id=f"m-{i}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                        ),
                        routing_key=queue,
                    )
                    for i in range(start, min(n, start + 200))
                )
            )


@pytest.mark.slow
def test_kill9_while_consuming_a_burst_loses_and_doubles_nothing(tmp_path: Path, vhost: RabbitVhost) -> None:
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"""
jobs:
  - name: work
    triggers: [{{amqp: {{queue: crash.q, prefetch: 256}}}}]
    parameters: [{{name: n}}]
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'}}
"""
    )
    env = {"JOBWIRE_AMQP_URL": vhost.url, "JOBWIRE_AMQP_INTAKE": "false"}
    data = tmp_path / "data"
    asyncio.run(publish(vhost.url, "crash.q", N))

    srv = Server(data, jobs, **env).start()
    lines = lambda: len(ledger.read_text().split()) if ledger.exists() else 0  # noqa: E731
    eventually_sync(lambda: lines() >= N // 3, 120, "a third of the burst to run")
    srv.kill9()
    assert lines() < N, "killed mid-burst"

    srv = Server(data, jobs, port=srv.port, **env).start()
    try:
        with srv.client() as c:

            runs = eventually_sync(
                lambda: (r := all_runs(c, "work")) and len(r) >= N and all(x["state"] in TERMINAL for x in r) and r,
                180,
                "every message's run to end",
            )
        expected = {run_id_for(f"work/amqp/m-{i}") for i in range(N)}
        assert {r["id"] for r in runs} == expected, "every message exactly one run"
        assert len(runs) == N
        counts = collections.Counter(ledger.read_text().split())
        doubled = {rid: n for rid, n in counts.items() if n > 1}
        assert not doubled, f"processes ran twice: {doubled}"
        states = collections.Counter(r["state"] for r in runs)
        lost = [r for r in runs if r["state"] == "failed"]
        assert all((r["error"] or {}).get("reason") == "Lost" for r in lost), states
        assert states["succeeded"] + len(lost) == N, states
    finally:
        srv.stop()
        print(srv.output()[-2000:], file=sys.stderr)


@pytest.mark.slow
def test_a_broker_restart_mid_burst_loses_and_doubles_nothing(tmp_path: Path, vhost: RabbitVhost) -> None:
    """RabbitMQ itself stops and starts (`rabbitmqctl stop_app` / `start_app`) while jobwire
    consumes: the source reconnects with backoff, every message is still exactly one run. Slow
    tests run one at a time, so restarting the shared broker disturbs no other test."""
    from tests.support.brokers import rabbitmqctl

    total = 1000
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"""
jobs:
  - name: work
    triggers: [{{amqp: {{queue: restart.q, prefetch: 64}}}}]
    parameters: [{{name: n}}]
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'}}
"""
    )
    env = {"JOBWIRE_AMQP_URL": vhost.url, "JOBWIRE_AMQP_INTAKE": "false"}
    asyncio.run(publish(vhost.url, "restart.q", total))
    lines = lambda: len(ledger.read_text().split()) if ledger.exists() else 0  # noqa: E731
    with Server(tmp_path / "data", jobs, **env) as srv:
        eventually_sync(lambda: lines() >= total // 5, 120, "a fifth of the burst to run")
        rabbitmqctl("stop_app")
        try:
            assert lines() < total, "stopped mid-burst"
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        with srv.client() as c:

            def done() -> list[dict] | None:
                items = all_runs(c, "work")
                return items if len(items) >= total and all(r["state"] in TERMINAL for r in items) else None

            runs = eventually_sync(done, 180, "every message's run after the broker came back")
    assert {r["id"] for r in runs} == {run_id_for(f"work/amqp/m-{i}") for i in range(total)}
    counts = collections.Counter(ledger.read_text().split())
    assert len(counts) == total and all(n == 1 for n in counts.values()), "each run executed once"
