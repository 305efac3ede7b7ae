"""Seed 003 end to end, in its own terms: jobs of its JSON form created, read, updated and deleted
over the API; fired on their cron schedules by the scheduler; executed by two runners over RabbitMQ
with a strict timeout; duplicates suppressed while the job is updated under its schedule; stored in
PostgreSQL; Prometheus metrics; job files in its form reloaded on change."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.brokers import RabbitVhost, need
from tests.support.fleet import KeyServer, metric, runner, scheduler
from tests.support.server import all_runs
from tests.support.waiting import eventually_sync

PG_ADMIN = os.environ.get("JOBWIRE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _admin(sql: str, dsn: str = PG_ADMIN) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    need(("127.0.0.1", 5432), "PostgreSQL")
    name = f"jwtest_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def seed(name: str, url: str, schedule: str, payload: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "schedule": schedule,
        "job": {"callback_url": url, "http_method": "post", "payload": payload},
    }


def test_seed003_end_to_end(tmp_path: Path, vhost: RabbitVhost, pg_url: str) -> None:
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    with KeyServer(slow_delay=5) as hook:
        sched = scheduler(
            tmp_path / "s",
            jobs_dir,
            vhost.url,
            JOBWIRE_DATABASE_URL=pg_url,
            JOBWIRE_DB_AUTO_MIGRATE="true",
            JOBWIRE_RELOAD="true",
        )
        r1, r2 = runner(tmp_path / "r1", vhost.url), runner(tmp_path / "r2", vhost.url)
        with r1, r2, sched, sched.client() as c:
            # created over the API in seed 003's form, read back in it
            tick = seed("tick", f"http://127.0.0.1:{hook.port}/tick", "* * * * * *", {"n": 0}, "every second")
            r = c.post("/jobs", json=tick)
            assert r.status_code == 201, r.text
            assert c.get("/jobs/tick", params={"format": "seed003"}).json() == tick

            def succeeded(at_least: int) -> list[dict[str, Any]] | None:
                runs = [x for x in all_runs(c, "tick") if x["state"] == "succeeded"]
                return runs if len(runs) >= at_least else None

            eventually_sync(lambda: succeeded(3), timeout=30, what="three fires of tick run")
            # updated under its schedule, again and again: no schedule fires twice
            for i in range(1, 8):
                r = c.put("/jobs/tick", json={**tick, "job": {**tick["job"], "payload": {"n": i}}})
                assert r.status_code == 200, r.text
            assert c.get("/jobs/tick", params={"format": "seed003"}).json()["job"]["payload"] == {"n": 7}
            before = len(succeeded(0) or [])
            eventually_sync(lambda: succeeded(before + 3), timeout=30, what="three more fires after updates")
            r = c.delete("/jobs/tick")
            assert r.status_code == 204, r.text
            assert c.get("/jobs/tick").status_code == 404

            # a strict timeout, on the runner: the call is cut at 0.5 s, not when the server answers
            slow = {
                "name": "slow",
                "triggers": [{"type": "api"}],
                "target": {"type": "http", "url": f"http://127.0.0.1:{hook.port}/slow", "timeout": "500ms"},
            }
            assert c.post("/jobs", json=slow).status_code == 201
            run_id = c.post("/jobs/slow/runs", json={}).json()["id"]
            ended = eventually_sync(
                lambda: (x := c.get(f"/runs/{run_id}").json())["state"] in ("timed_out", "failed") and x,
                timeout=30,
                what="the slow run ended",
            )
            assert ended["state"] == "timed_out", ended
            assert ended["error"]["reason"] == "Timeout"

            # a job file in seed 003's form (JSON), reloaded when it changes
            (jobs_dir / "hello.json").write_text(
                json.dumps(seed("hello", f"http://127.0.0.1:{hook.port}/hello", "* * * * *", {}, "v1"))
            )
            eventually_sync(lambda: c.get("/jobs/hello").status_code == 200, timeout=15, what="file loaded")
            changed = seed("hello", f"http://127.0.0.1:{hook.port}/hello", "*/5 * * * *", {"x": 1}, "v2")
            (jobs_dir / "hello.json").write_text(json.dumps(changed))
            eventually_sync(
                lambda: c.get("/jobs/hello", params={"format": "seed003"}).json() == changed,
                timeout=15,
                what="file change reloaded",
            )

            runs = all_runs(c, "tick")
            metrics_text = httpx.get(f"{sched.url}/metrics", timeout=10).text
            ran_by_runners = sum(metric(x.url, "jobwire_runner_runs_total") for x in (r1, r2))

        # each scheduled second has one run, each run one call, every call a recorded run
        scheduled = [x["scheduled_at"] for x in runs]
        assert len(scheduled) == len(set(scheduled)), "a schedule fired twice"
        ids = {x["id"] for x in runs}
        calls = collections.Counter(h.key for h in hook.hits if h.path == "/tick")
        assert set(calls) <= ids and max(calls.values()) == 1
        assert {x["id"] for x in runs if x["state"] == "succeeded"} <= set(calls)
        assert ran_by_runners >= len(calls) + 1  # tick's calls and the slow one ran on the runners
        assert 'jobwire_runs_finished_total{job="tick",state="succeeded"}' in metrics_text
        # stored in PostgreSQL
        rows = asyncio.run(_admin("SELECT id FROM runs WHERE job = 'tick'", pg_url))
        assert {r["id"] for r in rows} == ids
