"""kill -9 `jobwire serve` while it works through a burst of MQTT messages, restart it: every
message exactly one run, no process run twice — the PUBACK goes only after the run is committed,
the persistent session keeps what was not acknowledged, and a redelivered message finds its run
key taken. A private mosquitto (its queue per client unbounded) so the shared broker is untouched."""

from __future__ import annotations

import asyncio
import collections
import sys
from pathlib import Path

import pytest

from jobwire.model import run_id_for
from tests.support.mqtt import PrivateMosquitto, forget_session, publisher, unique, user_props
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

N = 1000
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}


async def publish(port: int, topic: str, n: int) -> None:
    async with publisher(port=port, max_inflight_messages=200) as pub:
        for start in range(0, n, 100):
            await asyncio.gather(
                *(
                    pub.publish(topic, b'{"n": "%d"}' % i, qos=1, properties=user_props(message_id=f"m-{i}"))
                    for i in range(start, min(n, start + 100))
                )
            )


@pytest.mark.slow
def test_kill9_while_consuming_a_burst_loses_and_doubles_nothing(tmp_path: Path) -> None:
    broker = PrivateMosquitto(tmp_path / "mosquitto", extra_conf="max_queued_messages 0\n")
    asyncio.run(broker.start())
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    topic = f"jwtest/{unique('crash')}/work"
    jobs.write_text(
        f"""
jobs:
  - name: work
    triggers: [{{mqtt: {{topic: "{topic}", event_key: message_id}}}}]
    parameters: [{{name: n}}]
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'}}
"""
    )
    client_id = unique("jwtest-crash")
    env = {
        "JOBWIRE_MQTT_URL": broker.url,
        "JOBWIRE_MQTT_CLIENT_ID": client_id,
        "JOBWIRE_MQTT_SINK": "false",
        "JOBWIRE_MQTT_STATUS_PREFIX": f"{topic}/svc",
    }
    data = tmp_path / "data"
    srv = Server(data, jobs, **dict(env)).start()
    try:
        with srv.client() as c:
            eventually_sync(
                lambda: any(s["connected"] for s in c.get("/readyz").json()["sources"]),
                30,
                "the mqtt source to subscribe",
            )
        asyncio.run(publish(broker.port, topic, N))
        lines = lambda: len(ledger.read_text().split()) if ledger.exists() else 0  # noqa: E731
        eventually_sync(lambda: lines() >= N // 3, 120, "a third of the burst to run")
        srv.kill9()
        assert lines() < N, "killed mid-burst"

        srv = Server(data, jobs, port=srv.port, **dict(env)).start()
        with srv.client() as c:

            runs = eventually_sync(
                lambda: (r := all_runs(c, "work")) and len(r) >= N and all(x["state"] in TERMINAL for x in r) and r,
                180,
                "every message's run to end",
            )
        expected = {run_id_for(f"work/mqtt/k:m-{i}") for i in range(N)}
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
        asyncio.run(forget_session(client_id, port=broker.port))
        asyncio.run(broker.stop())
