"""Defect 7: background tasks are supervised. A reload that hits a bad file does not end job-file
reloading; a loop that raises is logged, restarted with backoff and shown in /readyz and /metrics;
a one-shot task's exception is retrieved (never asyncio's "Task exception was never retrieved")."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from jobwire.api.app import create_app
from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.engine.supervisor import Supervisor
from jobwire.model import Job
from tests.support.waiting import eventually

JOB = """
jobs:
  - name: {name}
    target: {{type: local, command: ["true"]}}
"""


def write(path: Path, text: str | bytes) -> None:
    """Write and move the mtime forward, so the reload loop sees a change even within one tick."""
    data = text.encode() if isinstance(text, str) else text
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


@pytest.fixture
async def reloading(tmp_path: Path) -> AsyncIterator[tuple[Engine, Path]]:
    jobs = tmp_path / "jobs.yaml"
    write(jobs, JOB.format(name="first"))
    eng = Engine(Settings(data_dir=tmp_path / "data", jobs=[jobs], reload=True))
    eng.supervisor.backoff_min = 0.05
    await eng.start()
    yield eng, jobs
    await eng.stop()


def reload_task(engine: Engine) -> dict[str, Any]:
    return next(t.as_dict() for t in engine.supervisor.health() if t.name == "jobwire-reload")


async def test_reload_survives_a_nul_byte_file_and_reloads_the_next_good_change(
    reloading: tuple[Engine, Path],
) -> None:
    engine, jobs = reloading
    assert "first" in engine.jobs
    write(jobs, JOB.format(name="second").encode() + b"\0")  # a NUL byte: the reported crash
    # either the loader refuses it (JobFileError: definitions kept) or the reload raises and the
    # supervisor restarts the loop; both must keep reloading
    await eventually(
        lambda: engine.job_registry.file_mtimes.get(jobs) == jobs.stat().st_mtime, 10, "the bad file to be read"
    )
    write(jobs, JOB.format(name="third"))
    await eventually(lambda: "third" in engine.jobs, 15, "the good change after the bad file to be loaded")
    assert reload_task(engine)["state"] in ("running", "failing")
    assert not [t for t in engine.supervisor.tasks if t.done() and not t.cancelled() and t.exception()]


async def test_reload_loop_that_raises_is_restarted_and_reloads_the_next_change(
    reloading: tuple[Engine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, jobs = reloading
    real = engine.reload_files
    calls = 0

    async def explode_once() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("embedded null byte")  # what a NUL byte raised before the loader caught it
        return await real()

    monkeypatch.setattr(engine, "reload_files", explode_once)
    write(jobs, JOB.format(name="second"))
    health = await eventually(
        lambda: (h := reload_task(engine))["last_error"] and h, 10, "the reload failure to be recorded"
    )
    assert health["last_error"] == "ValueError: embedded null byte"
    assert health["critical"] is False
    assert "second" not in engine.jobs
    write(jobs, JOB.format(name="third"))
    await eventually(lambda: "third" in engine.jobs, 15, "the loop to be restarted and reload the change")
    assert reload_task(engine)["restarts"] >= 1
    # not critical: the engine still takes work
    assert engine.health()["ready"] is True


async def readyz_task(engine: Engine, name: str) -> tuple[int, dict[str, Any]]:
    """`/readyz`'s status code and what it shows of one task."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(engine)), base_url="http://t") as c:
        r = await c.get("/readyz")
    return r.status_code, next(t for t in r.json()["tasks"] if t["task"] == name)


def full_disk() -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database or disk is full")


async def test_a_store_error_in_the_reload_loop_is_logged_shown_in_readyz_and_the_loop_restarted(
    reloading: tuple[Engine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the loader this time: the store refuses to save a changed definition (a full disk). The
    error reaches the supervisor — logged, shown in /readyz — and the restarted loop loads the next
    change once the store takes writes again."""
    engine, jobs = reloading
    real = engine.store.save_jobs  # a reload saves what changed in one batch

    async def refuse(items: list[tuple[Job, str]]) -> Any:
        raise full_disk()

    monkeypatch.setattr(engine.store, "save_jobs", refuse)
    with structlog.testing.capture_logs() as logs:
        write(jobs, JOB.format(name="second"))
        health = await eventually(
            lambda: (h := reload_task(engine))["last_error"] and h, 10, "the store error to be recorded"
        )
    assert health["last_error"] == "OperationalError: database or disk is full"
    assert health["state"] == "failing" and health["critical"] is False
    logged = [e for e in logs if e.get("task") == "jobwire-reload"]
    assert logged and logged[0]["log_level"] == "error", logs
    assert logged[0]["event"] == "background task failed; restarting"
    assert logged[0]["error"] == "OperationalError: database or disk is full"
    status, shown = await readyz_task(engine, "jobwire-reload")
    assert status == 200, "not critical: the engine still takes work"
    assert shown["state"] == "failing" and shown["last_error"] == "OperationalError: database or disk is full"
    assert "second" not in engine.jobs
    monkeypatch.setattr(engine.store, "save_jobs", real)
    write(jobs, JOB.format(name="third"))
    await eventually(lambda: "third" in engine.jobs, 15, "the restarted loop to reload the next change")
    assert reload_task(engine)["restarts"] >= 1


async def test_a_store_error_in_a_retention_sweep_is_shown_in_readyz_and_the_loop_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep the store refuses is not swallowed by the retention loop: the supervisor shows it
    and restarts the loop, whose next sweep goes through."""
    engine = Engine(Settings(data_dir=tmp_path / "data", retention_interval=timedelta(milliseconds=50)))
    engine.supervisor.backoff_min = 0.05
    await engine.start()
    try:
        await engine.put_job(Job.model_validate({"name": "kept", "target": {"type": "local", "command": ["true"]}}))
        real = engine.store.prune_jobs
        calls = 0

        async def refuse_once(rules: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise full_disk()
            return await real(rules)

        monkeypatch.setattr(engine.store, "prune_jobs", refuse_once)
        health = await eventually(
            lambda: next(t.as_dict() for t in engine.supervisor.health() if t.name == "jobwire-retention")
            if calls >= 2
            else None,
            10,
            "the sweep after the failed one",
        )
        assert health["last_error"] == "OperationalError: database or disk is full"
        assert health["restarts"] >= 1 and health["critical"] is False
        status, shown = await readyz_task(engine, "jobwire-retention")
        assert status == 200 and shown["last_error"] == health["last_error"]
    finally:
        await engine.stop()


async def test_a_failing_critical_loop_is_restarted_with_backoff_and_shown_in_readyz_and_metrics(
    tmp_path: Path,
) -> None:
    engine = Engine(Settings(data_dir=tmp_path / "data"))
    engine.supervisor.backoff_min = 0.05
    engine.supervisor.healthy_after = 0.5
    await engine.start()
    started: list[float] = []
    fail_for = 3
    try:

        async def flaky() -> None:
            health = [t for t in engine.supervisor.health() if t.name == "jobwire-test-flaky"]
            started.append(health[0].retry_in or 0.0 if health else 0.0)
            if len(started) <= fail_for:
                raise RuntimeError(f"boom {len(started)}")
            await asyncio.Event().wait()  # then healthy for good

        engine.supervisor.loop("jobwire-test-flaky", flaky, critical=True)
        app = create_app(engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            async def unready_or_done() -> httpx.Response | None:
                r = await c.get("/readyz")
                return r if r.status_code != 200 or len(started) > fail_for else None

            r = await eventually(unready_or_done, 10, "readyz to show the failing loop (or the loop to recover)")
            if len(started) <= fail_for:
                assert r.status_code == 503, r.text
                body = r.json()
                assert body["status"] == "not ready"
                assert any("jobwire-test-flaky" in p and "RuntimeError: boom" in p for p in body["problems"])
                flaky_state = next(t for t in body["tasks"] if t["task"] == "jobwire-test-flaky")
                assert flaky_state["state"] == "failing" and flaky_state["critical"] is True
            # restarted until it runs, with growing delays (the backoff before each restart)
            await eventually(lambda: len(started) > fail_for, 10, "the loop to be restarted")
            delays = started[1:]
            assert delays == sorted(delays) and delays[-1] > delays[0], f"backoff grows: {delays}"
            metrics = (await c.get("/api/v1/metrics")).text
            assert f'jobwire_task_restarts_total{{task="jobwire-test-flaky"}} {float(fail_for)}' in metrics
            assert 'jobwire_task_up{task="jobwire-test-flaky"} 1.0' in metrics
            assert 'jobwire_task_up{task="jobwire-committer"} 1.0' in metrics
            # healthy for `healthy_after` seconds: ready again, the details still in the body
            r = await eventually(
                lambda: _ready(c), 10, "readyz to be ready once the loop has run healthy for a while"
            )
            flaky_state = next(t for t in r["tasks"] if t["task"] == "jobwire-test-flaky")
            assert flaky_state == {**flaky_state, "state": "running", "restarts": fail_for}
    finally:
        await engine.stop()


async def _ready(c: httpx.AsyncClient) -> dict[str, Any] | None:
    r = await c.get("/readyz")
    return r.json() if r.status_code == 200 else None


async def test_one_shot_task_exceptions_are_retrieved_and_logged() -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    sup = Supervisor()

    async def boom() -> None:
        raise RuntimeError("one-shot failure")

    task = sup.once(boom(), "jobwire-test-once")
    await asyncio.wait([task])
    del task
    gc.collect()
    assert not unretrieved, unretrieved


def test_restart_backoff_grows_and_is_capped() -> None:
    async def main() -> list[float]:
        sup = Supervisor(backoff_min=0.01, backoff_max=0.04, healthy_after=60)
        delays: list[float] = []

        async def fail() -> None:
            retry_in = sup.health()[0].retry_in
            if retry_in is not None:
                delays.append(retry_in)
            if len(delays) >= 5:
                return  # a loop that returns is done
            raise OSError("database or disk is full")

        task = sup.loop("jobwire-test-cap", fail)
        await asyncio.wait_for(task, 5)
        (h,) = sup.health()
        assert h.state == "stopped" and h.restarts == 5 and h.last_error == "OSError: database or disk is full"
        return delays

    delays = asyncio.run(main())
    nominal = [0.01, 0.02, 0.04, 0.04, 0.04]  # doubled each time, capped at backoff_max
    assert all(n * 0.8 <= d <= n * 1.2 for n, d in zip(nominal, delays, strict=True)), delays


async def test_a_targets_own_failing_task_is_shown_but_not_critical(tmp_path: Path) -> None:
    from jobwire.targets.base import Target

    class Watching(Target):
        kind = "watching"

        async def execute(self, ctx: Any) -> Any:
            raise NotImplementedError

        def health(self) -> dict[str, str | None]:
            return {"jobwire-watch-x": "ConnectError: connection refused", "jobwire-cleanup-x": None}

    engine = Engine(Settings(data_dir=tmp_path / "data"))
    engine.targets["watching"] = Watching(engine.settings)
    await engine.start()
    try:
        app = create_app(engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.get("/readyz")
        assert r.status_code == 200, r.text
        tasks = {t["task"]: t for t in r.json()["tasks"]}
        assert tasks["jobwire-watch-x"]["state"] == "failing"
        assert tasks["jobwire-watch-x"]["last_error"] == "ConnectError: connection refused"
        assert tasks["jobwire-cleanup-x"]["state"] == "running"
        assert tasks["jobwire-committer"]["critical"] is True
    finally:
        await engine.stop()


async def test_a_loop_whose_cleanup_raises_when_stopped_stops_and_is_not_restarted() -> None:
    """A stop cancels the loop; its cleanup then fails (a rollback on a connection the broker or
    database already closed) and that error replaces the cancel. It is still a stop: the task ends,
    once, and is not restarted (it was, and the stop waited for it forever)."""
    sup = Supervisor(backoff_min=0.01)
    started = 0

    async def loop() -> None:
        nonlocal started
        started += 1
        try:
            await asyncio.Event().wait()
        finally:
            raise ConnectionError("rollback failed: the connection is closed")

    task = sup.loop("jobwire-test-cleanup", loop)
    await eventually(lambda: started == 1, 5, "the loop to start")
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    (h,) = sup.health()
    assert task.cancelled() and started == 1
    assert h.state == "stopped" and h.restarts == 0


async def _library_timeout() -> None:
    """A library's timeout: it cancels the task it runs in, turns the CancelledError into its own
    error and never uncancels, leaving the task counted as cancelling."""
    this = asyncio.current_task()
    assert this is not None
    this.cancel()
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        raise TimeoutError("read timed out") from None


async def _self_cancel() -> None:
    """A CancelledError nobody asked for (a library's own cancel let through)."""
    raise asyncio.CancelledError


@pytest.mark.parametrize(
    ("first_run", "error"),
    [
        (_library_timeout, "TimeoutError: read timed out"),
        (_self_cancel, "RuntimeError: the loop ended cancelled, but nobody stopped it"),
    ],
)
async def test_a_loop_that_fails_by_a_cancel_nobody_asked_for_is_restarted(
    first_run: Callable[[], Awaitable[None]], error: str
) -> None:
    """Neither is a stop: the loop is restarted (the self-cancel stopped it silently before, and
    a check of the loop's own task's cancel count took the library timeout for a stop)."""
    sup = Supervisor(backoff_min=0.01)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await first_run()

    task = sup.loop("jobwire-test-unasked-cancel", loop)
    await asyncio.wait_for(task, 5)
    (h,) = sup.health()
    assert runs == 2 and h.restarts == 1 and h.state == "stopped" and not task.cancelled()
    assert h.last_error == error
