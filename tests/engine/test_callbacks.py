"""`POST /runs/{id}/callback` does what docs/api.md says, for every target alike: `ok: false` fails
the run at once with the job's message; `ok: true` is recorded and the run ends with its work;
with `callback.wait` a run whose work ended stays running until the job calls back."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from tests.support.server import Server
from tests.support.waiting import eventually, eventually_sync

PY = sys.executable
WAIT_FOR_FILE = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.01)"


def job(name: str, command: list[str], **kw: Any) -> Job:
    return Job.model_validate({"name": name, "target": {"type": "local", "command": command}, **kw})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await eng.start()
    yield eng
    await eng.stop()


async def state_of(engine: Engine, run_id: str, want: RunState) -> Any:
    async def check() -> Any:
        run = await engine.get_run(run_id)
        return run if run.state == want else None

    return await eventually(check, 15, f"run {run_id} to be {want.value}")


async def test_ok_false_fails_the_run_now_with_the_jobs_message(engine: Engine) -> None:
    await engine.put_job(job("long", ["sleep", "60"]))
    adm = await engine.trigger("long", {})
    assert adm.run is not None
    await state_of(engine, adm.run.id, RunState.running)
    token = engine.callback_token(adm.run.id)
    await engine.callback(adm.run.id, token, False, "input file is empty", {"rows": 0})
    run = await state_of(engine, adm.run.id, RunState.failed)
    assert run.error.message == "input file is empty" and run.error.reason == "CallbackFailed"
    assert run.target_status["callback"]["data"] == {"rows": 0}


async def test_ok_true_is_recorded_and_the_run_ends_with_its_work(engine: Engine, tmp_path: Path) -> None:
    release = tmp_path / "release"
    await engine.put_job(job("reports", [PY, "-c", WAIT_FOR_FILE, str(release)]))
    adm = await engine.trigger("reports", {})
    assert adm.run is not None
    await state_of(engine, adm.run.id, RunState.running)
    await engine.callback(adm.run.id, engine.callback_token(adm.run.id), True, "half way", {"pct": 50})
    assert (await engine.get_run(adm.run.id)).state == RunState.running, "ok: true does not end the run"
    release.touch()
    run = await state_of(engine, adm.run.id, RunState.succeeded)
    assert run.target_status["callback"]["message"] == "half way"


async def test_wait_keeps_the_run_running_until_the_job_calls_back(engine: Engine, tmp_path: Path) -> None:
    exited = tmp_path / "exited"
    touch = f"open({str(exited)!r}, 'w').close()"
    await engine.put_job(job("spotlike", [PY, "-c", touch], callback={"wait": True, "timeout": "1m"}))
    adm = await engine.trigger("spotlike", {})
    assert adm.run is not None
    eventually_sync(exited.exists, 15, "the process to end")
    await state_of(engine, adm.run.id, RunState.running)
    await engine.callback(adm.run.id, engine.callback_token(adm.run.id), True, "instance done", {})
    run = await state_of(engine, adm.run.id, RunState.succeeded)
    assert run.exit_code == 0


async def test_wait_fails_the_run_when_no_callback_comes(engine: Engine) -> None:
    await engine.put_job(job("silent", ["true"], callback={"wait": True, "timeout": "200ms"}))
    adm = await engine.trigger("silent", {})
    assert adm.run is not None
    run = await state_of(engine, adm.run.id, RunState.failed)
    assert run.error.reason == "CallbackTimeout"


def test_a_job_that_calls_back_ok_false_over_http_fails_with_its_message(tmp_path: Path) -> None:
    """The issue's case, end to end: the job posts to JOBWIRE_CALLBACK_URL with its token."""
    script = (
        "import json, os, time, urllib.request\n"
        "req = urllib.request.Request(os.environ['JOBWIRE_CALLBACK_URL'], method='POST',\n"
        "    data=json.dumps({'ok': False, 'message': 'no input today'}).encode(),\n"
        "    headers={'Authorization': 'Bearer ' + os.environ['JOBWIRE_CALLBACK_TOKEN'],\n"
        "             'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(req).status, flush=True)\n"
        "time.sleep(60)\n"
    )
    jobs = tmp_path / "jobs.yaml"
    definition = {"jobs": [{"name": "reporter", "target": {"type": "local", "command": [PY, "-c", script]}}]}
    jobs.write_text(json.dumps(definition))  # JSON is YAML
    with Server(tmp_path / "data", jobs) as srv, srv.client() as c:
        run_id = c.post("/jobs/reporter/runs", json={}).json()["id"]
        run = eventually_sync(
            lambda: (r := c.get(f"/runs/{run_id}").json())["state"] == "failed" and r, 20, "the run to fail"
        )
        assert run["error"]["message"] == "no input today" and run["error"]["reason"] == "CallbackFailed"


async def test_a_callback_is_answered_only_once_it_is_in_the_store(engine: Engine) -> None:
    """The caller's answer means "recorded": a kill -9 right after it must not lose the callback
    (a spot run would otherwise wait for a second one until its timeout, its instance running)."""
    await engine.put_job(job("long", ["sleep", "60"]))
    adm = await engine.trigger("long", {})
    assert adm.run is not None
    await state_of(engine, adm.run.id, RunState.running)
    await engine.callback(adm.run.id, engine.callback_token(adm.run.id), True, "done", {"rows": 3})
    stored = await engine.store.get_run(adm.run.id)  # the store itself, not the engine's memory
    assert stored is not None and stored.target_status.get("callback", {}).get("data") == {"rows": 3}
