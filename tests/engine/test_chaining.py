"""`after` triggers: job B runs when a run of job A ends — once per A run, with A's run id, end
state, parameters and callback data as B's parameters; loops refused at definition time; and a
kill -9 between A's end and B's launch neither loses nor doubles B."""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.engine.errors import ChainLoop
from jobwire.model import EventOutcome, Job, RunState
from jobwire.store import EventQuery, RunQuery
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually, eventually_sync

PY = sys.executable


def job(name: str, command: list[str], **kw: Any) -> Job:
    return Job.model_validate({"name": name, "target": {"type": "local", "command": command}, **kw})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await eng.start()
    yield eng
    await eng.stop()


async def runs_of(engine: Engine, name: str, n: int) -> list[Any]:
    async def check() -> list[Any] | None:
        runs = (await engine.store.list_runs(RunQuery(job=name))).items
        return runs if len(runs) >= n and all(r.state.terminal for r in runs) else None

    return await eventually(check, 15, f"{n} finished runs of {name}")


async def test_a_child_runs_once_after_its_parent_succeeds_with_the_parents_facts(engine: Engine) -> None:
    await engine.put_job(job("build", ["true"], parameters=[{"name": "ref", "default": "main"}]))
    declared = [{"name": n, "required": False} for n in ("parent_run_id", "parent_state", "ref")]
    await engine.put_job(job("deploy", ["true"], triggers=[{"after": "build"}], parameters=declared))
    await engine.put_job(job("alert", ["true"], triggers=[{"after": {"job": "build", "on": "failed"}}]))
    adm = await engine.trigger("build", {"ref": "v1.2"})
    assert adm.run is not None
    (child,) = await runs_of(engine, "deploy", 1)
    assert child.state == RunState.succeeded and child.trigger == "after"
    assert child.params == {"parent_run_id": adm.run.id, "parent_state": "succeeded", "ref": "v1.2"}
    events = (await engine.store.list_events(EventQuery(job="deploy"))).items
    assert [(e.source, e.outcome) for e in events] == [("after", EventOutcome.run)]
    assert (await engine.store.list_runs(RunQuery(job="alert"))).items == [], "on: failed did not fire"


async def test_on_failed_and_on_finished(engine: Engine) -> None:
    await engine.put_job(job("flaky", ["false"]))
    await engine.put_job(job("cleanup", ["true"], triggers=[{"after": {"job": "flaky", "on": "finished"}}]))
    await engine.put_job(job("page", ["true"], triggers=[{"after": {"job": "flaky", "on": "failed"}}]))
    await engine.put_job(job("next", ["true"], triggers=[{"after": "flaky"}]))
    await engine.trigger("flaky", {})
    await runs_of(engine, "cleanup", 1)
    await runs_of(engine, "page", 1)
    assert (await engine.store.list_runs(RunQuery(job="next"))).items == []


async def test_callback_data_reaches_the_child(engine: Engine, tmp_path: Path) -> None:
    release = tmp_path / "release"
    wait = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)"
    await engine.put_job(job("extract", [PY, "-c", wait, str(release)]))
    await engine.put_job(
        job("load", ["true"], triggers=[{"after": "extract"}], parameters=[{"name": "rows", "type": "integer"}])
    )
    adm = await engine.trigger("extract", {})
    assert adm.run is not None

    async def running() -> bool:
        return (await engine.get_run(adm.run.id)).state == RunState.running  # type: ignore[union-attr]

    await eventually(running, 10, "extract to run")
    await engine.callback(adm.run.id, engine.callback_token(adm.run.id), True, None, {"rows": 42})
    release.touch()
    (child,) = await runs_of(engine, "load", 1)
    assert child.params == {"rows": 42}


async def test_a_chain_that_loops_back_is_refused(engine: Engine) -> None:
    await engine.put_job(job("a", ["true"]))
    await engine.put_job(job("b", ["true"], triggers=[{"after": "a"}]))
    with pytest.raises(ChainLoop, match="a → b → a"):
        await engine.put_job(job("a", ["true"], triggers=[{"after": "b"}]))
    with pytest.raises(ChainLoop):
        await engine.put_job(job("self", ["true"], triggers=[{"after": "self"}]))
    assert engine.get_job("a").job.triggers == []


N = 300


@pytest.mark.slow
def test_kill9_between_parent_end_and_child_launch_loses_and_doubles_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"""
jobs:
  - name: parent
    target: {{type: local, command: ["true"]}}
  - name: child
    triggers: [{{after: parent}}]
    parameters: [{{name: parent_run_id}}]
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_PARAM_PARENT_RUN_ID" >> {ledger}'}}
"""
    )
    data = tmp_path / "data"
    keys = [f"p-{i}" for i in range(N)]

    async def fire(url: str, kill: Any) -> None:
        async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=10) as c:
            sem = asyncio.Semaphore(20)

            async def one(key: str) -> None:
                async with sem:
                    try:
                        await c.post("/jobs/parent/runs", json={}, headers={"Idempotency-Key": key})
                    except httpx.HTTPError:
                        return
                    if kill is not None and ledger.exists() and len(ledger.read_text().split()) >= N // 4:
                        kill()

            await asyncio.gather(*(one(k) for k in keys))

    srv = Server(data, jobs).start()
    killed = []

    def kill() -> None:
        if not killed:
            killed.append(1)
            srv.kill9()

    asyncio.run(fire(srv.url, kill))
    if not killed:
        srv.kill9()
    srv = Server(data, jobs, port=srv.port).start()
    try:
        asyncio.run(fire(srv.url, None))  # every parent request again: each has its one run
        with srv.client() as c:

            def settled() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
                parents, children = all_runs(c, "parent"), all_runs(c, "child")
                done = [p for p in parents if p["state"] == "succeeded"]
                if len(parents) < N or any(not r["finished_at"] for r in parents + children):
                    return None
                return (parents, children) if len(children) >= len(done) else None

            parents, children = eventually_sync(settled, 120, "every parent and its child to end")
        succeeded = {p["id"] for p in parents if p["state"] == "succeeded"}
        per_parent = collections.Counter(ch["params"]["parent_run_id"] for ch in children)
        assert set(per_parent) == succeeded, "every parent that succeeded has a child, and only those"
        assert all(n == 1 for n in per_parent.values()), "no parent has two children"
        ran = collections.Counter(ledger.read_text().split())
        assert all(n == 1 for n in ran.values()), f"a child ran twice: {[k for k, n in ran.items() if n > 1]}"
    finally:
        srv.stop()
