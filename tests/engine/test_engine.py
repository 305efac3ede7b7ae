"""The engine driven in-process, on a real SQLite store and real local processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Conflict, Engine, Forbidden, InvalidParams, JobNotFound
from jobwire.model import (
    Admission,
    EventOutcome,
    Incoming,
    Job,
    RunState,
    StatusDocument,
    Transition,
    run_id_for,
    time_run_key,
    utcnow,
)
from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from jobwire.store import Intake, RunQuery
from tests.support.waiting import eventually

PY = sys.executable


def job(name: str, command: list[str] | str, **kw: Any) -> Job:
    target: dict[str, Any] = {"type": "local", "command": command}
    if isinstance(command, str):
        target["shell"] = True
    target.update(kw.pop("target", {}))
    return Job.model_validate({"name": name, "target": target, **kw})


def settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=kw.pop("grace", 5)), **kw)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    eng = Engine(settings(tmp_path))
    await eng.start()
    yield eng
    await eng.stop()


async def finished(engine: Engine, run_id: str, timeout: float = 15) -> Any:
    async def check() -> Any:
        run = await engine.get_run(run_id)
        return run if run.state.terminal else None

    return await eventually(check, timeout, f"run {run_id} to finish")


async def log_text(engine: Engine, run_id: str) -> str:
    return b"".join([c async for c in engine.run_log(run_id)]).decode()


async def test_api_trigger_runs_a_local_process_with_params_as_argv(engine: Engine) -> None:
    await engine.put_job(
        job(
            "greet",
            [PY, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", "hello, {{name}}", "{{name}}"],
            parameters=[{"name": "name", "required": True}],
        )
    )
    evil = "x; rm -rf / $(id) `id` {{name}}"
    adm = await engine.trigger("greet", {"name": evil})
    assert adm.run is not None and adm.event.outcome == EventOutcome.run
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded, run.error
    assert run.exit_code == 0
    assert json.loads((await log_text(engine, run.id)).strip()) == [f"hello, {evil}", evil]
    states = [t.state for t in run.history]
    assert states == [RunState.pending, RunState.running, RunState.succeeded]
    event = await engine.store.get_event(adm.event.id)
    assert event is not None and event.run_id == run.id


async def test_status_documents_follow_every_state_change(engine: Engine) -> None:
    await engine.put_job(job("ok", ["true"], environment="test"))
    docs: list[StatusDocument] = []
    subscription = engine.subscribe()  # subscribed from here on

    async def collect() -> None:
        async for d in subscription:
            docs.append(d)

    task = asyncio.create_task(collect())
    adm = await engine.trigger("ok", {})
    assert adm.run
    await finished(engine, adm.run.id)
    await eventually(lambda: any(d.action == "succeeded" for d in docs), 5)
    task.cancel()
    mine = [d for d in docs if d.run_id == adm.run.id]
    assert [d.action for d in mine] == ["pending", "running", "succeeded"]
    last = mine[-1]
    assert last.name == "ok" and last.environment == "test" and last.event_id == adm.event.id
    assert last.status.succeeded == 1 and last.status.active == 0 and last.status.completionTime is not None
    assert mine[1].status.active == 1


async def test_input_location_and_environment_reach_the_status_document(engine: Engine) -> None:
    """Seed 000's fields come from the parameters of the same name, for every trigger kind."""
    params = [{"name": "input_location", "required": False}, {"name": "environment", "default": "dev"}]
    await engine.put_job(job("s3ish", ["true"], environment="prod", parameters=params))
    subscription = engine.subscribe()
    adm = await engine.trigger("s3ish", {"input_location": "test/s3ish/in.csv", "environment": "test"})
    assert adm.run is not None and adm.run.input_location == "test/s3ish/in.csv"
    assert adm.event.input_location == "test/s3ish/in.csv"
    first = await asyncio.wait_for(anext(subscription), 5)
    assert (first.input_location, first.environment) == ("test/s3ish/in.csv", "test")
    await subscription.aclose()
    # a source that knows them passes them on the Incoming; the job's environment is the fallback
    other = await engine.submit(Incoming(job="s3ish", trigger="api", source="api", params={}, environment=None))
    assert other.run is not None and other.run.environment == "dev"  # the parameter's default


async def test_a_message_a_source_could_not_read_is_recorded_invalid_with_its_reason(engine: Engine) -> None:
    await engine.put_job(job("ok", ["true"]))
    adm = await engine.submit(
        Incoming(job="ok", trigger="amqp", source="amqp", payload="{not json", problem="body is not JSON")
    )
    assert adm.event.outcome == EventOutcome.invalid and adm.event.reason == "body is not JSON"
    assert adm.run is None and adm.event.payload == "{not json"


async def test_idempotency_key_makes_one_run(engine: Engine) -> None:
    await engine.put_job(job("once", ["true"]))
    a = await engine.trigger("once", {}, idempotency_key="k-1")
    b = await engine.trigger("once", {}, idempotency_key="k-1")
    assert a.run and b.run and a.run.id == b.run.id
    assert b.event.outcome == EventOutcome.duplicate and b.event.run_id == a.run.id
    await finished(engine, a.run.id)
    c = await engine.trigger("once", {}, idempotency_key="k-1")
    assert c.event.outcome == EventOutcome.duplicate and c.run and c.run.id == a.run.id
    page = await engine.store.list_runs(RunQuery(job="once"))
    assert len(page.items) == 1


async def test_unknown_job_and_bad_params_are_recorded_and_named(engine: Engine) -> None:
    await engine.put_job(
        job("typed", ["true"], parameters=[{"name": "n", "type": "integer", "required": True}])
    )
    with pytest.raises(JobNotFound):
        await engine.trigger("nope", {})
    with pytest.raises(InvalidParams, match="'n'"):
        await engine.trigger("typed", {"n": "abc"})
    with pytest.raises(InvalidParams, match="extra"):
        await engine.trigger("typed", {"n": 1, "extra": 2})
    from jobwire.store import EventQuery

    events = (await engine.store.list_events(EventQuery(outcomes=[EventOutcome.invalid]))).items
    assert len(events) == 3
    assert all(e.reason for e in events)


async def test_forbid_skips_and_records_overlap(engine: Engine) -> None:
    await engine.put_job(job("single", ["sleep", "30"], concurrency={"policy": "forbid"}))
    a = await engine.trigger("single", {})
    assert a.run
    await eventually(lambda: engine.runs[a.run.id].state == RunState.running if a.run else None, 5)
    b = await engine.trigger("single", {})
    assert b.run is None and b.event.outcome == EventOutcome.overlap
    assert a.run.id in (b.event.reason or "")
    await engine.cancel(a.run.id)
    run = await finished(engine, a.run.id)
    assert run.state == RunState.cancelled


async def test_queue_runs_one_after_another(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "order.txt"
    await engine.put_job(
        job(
            "serial",
            [
                PY,
                "-c",
                "import sys,time; open(sys.argv[1],'a').write(sys.argv[2]+'+'); time.sleep(0.2);"
                "open(sys.argv[1],'a').write(sys.argv[2]+'-')",
                str(out),
                "{{i}}",
            ],
            parameters=[{"name": "i"}],
            concurrency={"policy": "queue"},
        )
    )
    runs = [await engine.trigger("serial", {"i": str(i)}) for i in range(3)]
    assert [r.run.state for r in runs if r.run] == [RunState.pending, RunState.queued, RunState.queued]
    for r in runs:
        assert r.run
        assert (await finished(engine, r.run.id)).state == RunState.succeeded
    assert out.read_text() == "0+0-1+1-2+2-"


async def test_replace_cancels_the_running_one(engine: Engine) -> None:
    await engine.put_job(job("latest", ["sleep", "30"], concurrency={"policy": "replace"}))
    a = await engine.trigger("latest", {})
    assert a.run
    await eventually(lambda: engine.runs.get(a.run.id) and engine.runs[a.run.id].state == RunState.running, 5)
    b = await engine.trigger("latest", {})
    assert b.run and b.run.state == RunState.pending
    old = await finished(engine, a.run.id)
    assert old.state == RunState.cancelled and "replaced" in (old.error.message if old.error else "")
    await engine.cancel(b.run.id)


async def test_concurrency_key_limits_per_parameter_value(engine: Engine) -> None:
    await engine.put_job(
        job(
            "per-customer",
            ["sleep", "30"],
            parameters=[{"name": "customer"}],
            concurrency={"policy": "forbid", "key": "customer"},
        )
    )
    a = await engine.trigger("per-customer", {"customer": "a"})
    b = await engine.trigger("per-customer", {"customer": "b"})
    a2 = await engine.trigger("per-customer", {"customer": "a"})
    assert a.run and b.run and a2.run is None and a2.event.outcome == EventOutcome.overlap
    await engine.cancel(a.run.id)
    await engine.cancel(b.run.id)


async def test_max_running_with_allow_queues_the_excess(engine: Engine) -> None:
    await engine.put_job(job("two", ["sleep", "30"], concurrency={"policy": "allow", "max_running": 2}))
    runs = [await engine.trigger("two", {}) for _ in range(3)]
    assert [r.run.state for r in runs if r.run] == [RunState.pending, RunState.pending, RunState.queued]
    first = runs[0].run
    assert first
    await engine.cancel(first.id)
    third = runs[2].run
    assert third
    await eventually(lambda: engine.runs[third.id].state in (RunState.pending, RunState.running), 5)
    for r in runs[1:]:
        assert r.run
        await engine.cancel(r.run.id)


async def test_retries_with_backoff_then_success(engine: Engine, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = (
        "import os,sys; p=sys.argv[1]; n=int(open(p).read()) if os.path.exists(p) else 0;"
        "open(p,'w').write(str(n+1)); sys.exit(0 if n>=2 else 3)"
    )
    await engine.put_job(
        job(
            "flaky",
            [PY, "-c", script, str(counter)],
            retry={"max_attempts": 3, "backoff": "50ms", "jitter": 0},
        )
    )
    adm = await engine.trigger("flaky", {})
    assert adm.run
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.succeeded and run.attempt == 3
    failed = [t for t in run.history if t.state == RunState.failed]
    assert [t.attempt for t in failed] == [1, 2]
    assert counter.read_text() == "3"


async def test_retries_exhausted_keeps_the_error(engine: Engine) -> None:
    await engine.put_job(job("bad", ["false"], retry={"max_attempts": 2, "backoff": "10ms"}))
    adm = await engine.trigger("bad", {})
    assert adm.run
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.failed and run.attempt == 2
    assert run.exit_code == 1 and run.error and run.error.code == 1


async def test_timeout_stops_the_process(engine: Engine, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    await engine.put_job(
        job(
            "slow",
            [
                PY,
                "-c",
                "import os,sys,time; open(sys.argv[1],'w').write(str(os.getpid())); time.sleep(60)",
                str(pidfile),
            ],
            timeout="300ms",
        )
    )
    adm = await engine.trigger("slow", {})
    assert adm.run
    run = await finished(engine, adm.run.id)
    assert run.state == RunState.timed_out and run.error and run.error.reason == "Timeout"
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await eventually(gone, 5, "process to be gone")


async def test_interval_trigger_fires_and_pause_stops_it(engine: Engine) -> None:
    await engine.put_job(job("tick", ["true"], triggers=[{"interval": "200ms"}]))

    async def runs() -> int:
        return len((await engine.store.list_runs(RunQuery(job="tick"))).items)

    await eventually(lambda: _at_least(runs, 2), 5, "two interval runs")
    await engine.pause("tick")
    await engine.committer.flush()
    n = await runs()
    # paused: the next due times pass without new runs; a manual run still works
    manual = await engine.trigger("tick", {})
    assert manual.run
    await finished(engine, manual.run.id)
    assert await runs() <= n + 2  # at most one in-flight fire raced the pause, plus the manual run
    await engine.resume("tick")
    await eventually(lambda: _at_least(runs, n + 3), 5, "runs after resume")


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def test_time_trigger_run_key_dedupes_a_second_fire(engine: Engine) -> None:
    await engine.put_job(job("daily", ["true"], triggers=[{"cron": "0 3 * * *"}]))
    due = utcnow().replace(microsecond=0)
    inc = Incoming(job="daily", trigger="cron", source="cron", scheduled_at=due)
    a = await engine.submit(inc)
    b = await engine.submit(inc)
    assert a.run and a.run.id == run_id_for(time_run_key("daily", "cron", due))
    assert b.event.outcome == EventOutcome.duplicate and b.event.run_id == a.run.id


async def test_submit_many_admits_each_event_as_submit_would(engine: Engine) -> None:
    """A batch bigger than one chunk, with every outcome in it: runs, an unknown job, a paused job,
    a repeat of a due time inside the batch, and an overlap that `forbid` skips. Each event gets
    exactly the admission `submit` would give it, in order, and the store holds exactly those rows."""
    from jobwire.engine.intake import SUBMIT_CHUNK

    await engine.put_job(job("tick", ["true"], triggers=[{"cron": "0 0 1 1 *"}]))  # never fires here
    await engine.put_job(
        job(
            "once",
            [PY, "-c", "import time; time.sleep(5)"],
            triggers=[{"cron": "0 0 1 1 *"}],
            concurrency={"policy": "forbid"},
        )
    )
    await engine.put_job(job("napping", ["true"], triggers=[{"cron": "0 0 1 1 *"}]))
    await engine.pause("napping")
    base = utcnow().replace(microsecond=0) - timedelta(days=1)
    batch = [
        Incoming(job="tick", trigger="cron", source="cron", scheduled_at=base + timedelta(seconds=i))
        for i in range(SUBMIT_CHUNK + 10)
    ]
    batch.insert(3, Incoming(job="ghost", trigger="cron", source="cron", scheduled_at=base))
    batch.insert(5, Incoming(job="napping", trigger="cron", source="cron", scheduled_at=base))
    batch.insert(7, batch[0])  # the same due time again, inside the batch
    batch.insert(9, Incoming(job="once", trigger="cron", source="cron", scheduled_at=base))
    batch.insert(
        SUBMIT_CHUNK + 5,
        Incoming(job="once", trigger="cron", source="cron", scheduled_at=base + timedelta(hours=1)),
    )
    results = await engine.submit_many(batch)
    assert len(results) == len(batch)
    outcomes = [r.event.outcome if not isinstance(r, BaseException) else r for r in results]
    expected = [EventOutcome.run] * len(batch)
    expected[3], expected[5], expected[7] = EventOutcome.invalid, EventOutcome.paused, EventOutcome.duplicate
    expected[SUBMIT_CHUNK + 5] = EventOutcome.overlap
    assert outcomes == expected
    first = results[0]
    assert not isinstance(first, BaseException) and first.run is not None
    dup = results[7]
    assert not isinstance(dup, BaseException) and dup.event.run_id == first.run.id
    for inc, adm in zip(batch, results, strict=True):
        assert isinstance(adm, Admission)
        assert adm.event.job == inc.job and adm.event.scheduled_at == inc.scheduled_at
        if adm.event.outcome == EventOutcome.run:
            assert adm.run is not None
            assert adm.run.id == run_id_for(time_run_key(inc.job or "", "cron", inc.scheduled_at or base))
    made = [r for r in results if not isinstance(r, BaseException) and r.event.outcome == EventOutcome.run]
    page = await engine.store.list_runs(RunQuery(limit=500))
    assert sorted(r.id for r in page.items) == sorted(r.run.id for r in made if r.run)
    for adm in made:
        assert adm.run is not None
        await finished(engine, adm.run.id) if adm.run.job == "tick" else None
    await engine.cancel(next(r.run.id for r in made if r.run and r.run.job == "once"))


async def test_webhook_signatures(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    await engine.put_job(
        job(
            "hook",
            ["true"],
            triggers=[{"webhook": {"secret_env": "HOOK_SECRET"}}],
            parameters=[{"name": "ref", "default": "main"}],
        )
    )
    body = json.dumps({"ref": "dev", "other": 1}).encode()
    now = int(time.time())

    def headers(ts: int, delivery: str, secret: bytes = b"s3cret") -> dict[str, str]:
        return {SIGNATURE_HEADER: sign(secret, body, ts, delivery=delivery), DELIVERY_HEADER: delivery}

    adm = await engine.webhook("hook", None, body, headers(now, "d-1"))
    assert adm.run and adm.run.params == {"ref": "dev"}
    with pytest.raises(Forbidden, match="mismatch"):
        await engine.webhook("hook", None, body, headers(now, "d-2", b"wrong"))
    with pytest.raises(Forbidden, match="stale"):
        await engine.webhook("hook", None, body, headers(now - 3600, "d-3"))
    with pytest.raises(Forbidden, match="missing"):
        await engine.webhook("hook", None, body, {DELIVERY_HEADER: "d-4"})
    with pytest.raises(Conflict, match="already received"):
        await engine.webhook("hook", None, body, headers(now, "d-1"))
    runs = (await engine.store.list_runs(RunQuery(job="hook"))).items
    assert len(runs) == 1


async def test_callback_token_is_per_run(engine: Engine) -> None:
    await engine.put_job(job("cb", ["sleep", "30"]))
    adm = await engine.trigger("cb", {})
    assert adm.run
    with pytest.raises(Forbidden):
        await engine.callback(adm.run.id, "nope", True, None, {})
    await engine.cancel(adm.run.id)
    with pytest.raises(Conflict):
        await engine.callback(adm.run.id, engine.callback_token(adm.run.id), True, None, {})


async def test_log_is_capped(engine: Engine) -> None:
    await engine.put_job(job("chatty", [PY, "-c", "print('x'*10000)"], target={"log_max_bytes": 1000}))
    adm = await engine.trigger("chatty", {})
    assert adm.run
    await finished(engine, adm.run.id)
    text = await log_text(engine, adm.run.id)
    assert text.startswith("x" * 1000) and "truncated at 1000 bytes" in text and len(text) < 1100


async def test_retention_keeps_newest_and_drops_expired(engine: Engine) -> None:
    await engine.put_job(job("many", ["true"], retention={"keep": 2, "ttl": "0s"}))
    ids = []
    for _ in range(5):
        adm = await engine.trigger("many", {})
        assert adm.run
        await finished(engine, adm.run.id)
        ids.append(adm.run.id)
    await engine.committer.flush()
    await engine.sweep()
    left = {r.id for r in (await engine.store.list_runs(RunQuery(job="many"))).items}
    assert left == set(ids[-2:])
    assert not engine.logs.path(ids[0]).exists()


async def test_shutdown_interrupts_local_runs_after_grace(tmp_path: Path) -> None:
    eng = Engine(settings(tmp_path, grace=0.2))
    await eng.start()
    await eng.put_job(job("long", ["sleep", "30"]))
    adm = await eng.trigger("long", {})
    assert adm.run
    await eventually(lambda: eng.runs[adm.run.id].state == RunState.running if adm.run else None, 5)
    await eng.stop()
    eng2 = Engine(settings(tmp_path))
    await eng2.store.open()
    run = await eng2.store.get_run(adm.run.id)
    await eng2.store.close()
    assert run and run.state == RunState.interrupted


async def test_restart_resumes_pending_and_marks_lost_running(tmp_path: Path) -> None:
    """What a crash leaves behind: a recorded pending run never launched (no marker) is launched;
    a running local process of the old scheduler is 'lost' and retried per policy."""
    s = settings(tmp_path)
    eng = Engine(s)
    await eng.store.open()
    j = job("crashy", ["true"], retry={"max_attempts": 2, "backoff": "10ms"})
    await eng.store.save_job(j, "api")
    now = utcnow()
    from jobwire.model import Event, Run

    def mk(key: str, state: RunState) -> Intake:
        rid = run_id_for(key)
        ev = Event(id="e" + key, job="crashy", trigger="api", source="api", received_at=now, run_id=rid)
        run = Run(
            id=rid,
            key=key,
            job="crashy",
            trigger="api",
            event_id=ev.id,
            state=state,
            created_at=now,
            history=[Transition(state=state, at=now)],
        )
        return Intake(ev, run)

    recs = await eng.store.record([mk("p", RunState.pending), mk("r", RunState.running)])
    await eng.store.close()
    pending_id, running_id = recs[0].run.id, recs[1].run.id  # type: ignore[union-attr]

    eng = Engine(s)
    await eng.start()
    try:
        p = await finished(eng, pending_id)
        r = await finished(eng, running_id)
        assert p.state == RunState.succeeded and p.attempt == 1
        assert r.state == RunState.succeeded and r.attempt == 2
        assert any(t.state == RunState.failed and "lost" in (t.reason or "") for t in r.history)
    finally:
        await eng.stop()


async def test_catch_up_latest_and_all(tmp_path: Path) -> None:
    s = settings(tmp_path)
    eng = Engine(s)
    await eng.store.open()
    hourly_all = job(
        "all", ["true"], triggers=[{"interval": "1h"}], catchup={"policy": "all", "window": "5h"}
    )
    hourly_latest = job(
        "latest", ["true"], triggers=[{"interval": "1h"}], catchup={"policy": "latest", "window": "5h"}
    )
    skipped = job("skip", ["true"], triggers=[{"interval": "1h"}], catchup={"policy": "skip"})
    from jobwire.model import Event

    now = utcnow()
    last = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    for j in (hourly_all, hourly_latest, skipped):
        await eng.store.save_job(j, "api")
        await eng.store.record(
            [
                Intake(
                    Event(
                        id=f"e-{j.name}",
                        job=j.name,
                        trigger="interval",
                        source="interval",
                        received_at=last,
                        scheduled_at=last,
                    )
                )
            ]
        )
    await eng.store.close()
    eng = Engine(s)
    await eng.start()
    try:
        await eng.committer.flush()
        counts = {
            n: len((await eng.store.list_runs(RunQuery(job=n))).items) for n in ("all", "latest", "skip")
        }
        assert counts == {"all": 3, "latest": 1, "skip": 0}
    finally:
        await eng.stop()


async def test_second_engine_on_same_file_refuses(engine: Engine, tmp_path: Path) -> None:
    from jobwire.store import StoreLocked

    other = Engine(settings(tmp_path))
    with pytest.raises(StoreLocked, match="another jobwire"):
        await other.start()


async def test_burst_of_api_triggers_is_group_committed(engine: Engine) -> None:
    await engine.put_job(job("burst", ["true"]))
    adms = await asyncio.gather(
        *(engine.trigger("burst", {}, idempotency_key=f"k{i % 200}") for i in range(400))
    )
    ids = {a.run.id for a in adms if a.run}
    assert len(ids) == 200
    dup = [a for a in adms if a.event.outcome == EventOutcome.duplicate]
    assert len(dup) == 200
