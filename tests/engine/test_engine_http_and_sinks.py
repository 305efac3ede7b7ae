"""The engine with the HTTP target and the webhook sink, against real local HTTP servers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from jobwire.config import Settings, WebhookSinkSpec
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.support.fake_context import RecordingServer, SeenRequest
from tests.support.waiting import eventually


@dataclass
class FlakyServer(RecordingServer):
    """`/flaky` answers 503 to the first two requests, then 200."""

    def _route(self, req: SeenRequest) -> tuple[int, bytes]:  # type: ignore[override]
        if req.path == "/flaky":
            n = sum(1 for r in self.requests if r.path == "/flaky")
            return (503, b"busy") if n <= 2 else (200, b"done")
        return RecordingServer._route(req)


@pytest.fixture
async def server() -> AsyncIterator[FlakyServer]:
    srv = await FlakyServer().start()
    yield srv
    await srv.stop()


async def test_http_target_retries_with_one_idempotency_key(tmp_path: Path, server: FlakyServer) -> None:
    eng = Engine(Settings(data_dir=tmp_path / "d", http_allow_private=True))
    await eng.start()
    try:
        await eng.put_job(
            Job.model_validate(
                {
                    "name": "call",
                    "parameters": [{"name": "n", "type": "integer"}],
                    "target": {"type": "http", "url": server.url("/flaky"), "payload": {"count": "{{n}}"}},
                    "retry": {"max_attempts": 3, "backoff": "20ms", "jitter": 0},
                }
            )
        )
        adm = await eng.trigger("call", {"n": "7"})
        assert adm.run
        run = await eventually(
            lambda: _terminal(eng, adm.run.id if adm.run else ""), 15, "the HTTP run to end"
        )
        assert run.state == RunState.succeeded and run.attempt == 3 and run.http_status == 200
        reqs = [r for r in server.requests if r.path == "/flaky"]
        assert len(reqs) == 3
        assert {r.headers["idempotency-key"] for r in reqs} == {adm.run.id}
        assert [r.headers["jobwire-attempt"] for r in reqs] == ["1", "2", "3"]
        assert all(r.json() == {"count": 7} for r in reqs)
        assert [t.http_status for t in [run]] == [200]
    finally:
        await eng.stop()


async def _terminal(eng: Engine, run_id: str):  # type: ignore[no-untyped-def]
    run = await eng.get_run(run_id)
    return run if run.state.terminal else None


async def test_webhook_sink_gets_every_state_signed(tmp_path: Path, server: FlakyServer) -> None:
    sink = WebhookSinkSpec(url=server.url("/hook"), secret="sink-secret")
    eng = Engine(Settings(data_dir=tmp_path / "d", sinks=[sink], shutdown_grace=timedelta(seconds=1)))
    await eng.start()
    try:
        await eng.put_job(
            Job.model_validate({"name": "j", "environment": "test", "target": {"type": "local", "command": ["true"]}})
        )
        adm = await eng.trigger("j", {})
        assert adm.run
        hooks = await eventually(
            lambda: (h := [r for r in server.requests if r.path == "/hook"]) and len(h) >= 3 and h, 10, "3 hooks"
        )
        docs = [json.loads(r.body) for r in hooks]
        assert [d["action"] for d in docs] == ["pending", "running", "succeeded"]
        assert all(d["run_id"] == adm.run.id and d["event_id"] == adm.event.id for d in docs)
        assert docs[-1]["name"] == "j" and docs[-1]["environment"] == "test"
        assert set(docs[-1]["status"]) == {"active", "completionTime", "startTime", "failed", "succeeded"}
        for r in hooks:
            verify(b"sink-secret", r.body, r.headers[SIGNATURE_HEADER.lower()], time.time(), 300, delivery=r.headers[DELIVERY_HEADER.lower()])
            assert r.headers[DELIVERY_HEADER.lower()].startswith(adm.run.id)
        assert "sink-secret" not in json.dumps(eng.settings.masked())
    finally:
        await eng.stop()


async def test_http_runs_need_no_launch_journal_line(tmp_path: Path, server: FlakyServer) -> None:
    """An `http` attempt writes no launch-journal line (a local process does): after a crash a
    pending HTTP run is called again with the same Idempotency-Key whether or not its call went out,
    so the line would change nothing (`Target.launch_marker`)."""
    eng = Engine(Settings(data_dir=tmp_path / "d", http_allow_private=True))
    await eng.start()
    try:
        await eng.put_job(Job.model_validate({"name": "call", "target": {"type": "http", "url": server.url("/ok")}}))
        await eng.put_job(Job.model_validate({"name": "proc", "target": {"type": "local", "command": ["true"]}}))
        call, proc = await eng.trigger("call", {}), await eng.trigger("proc", {})
        assert call.run and proc.run
        for rid in (call.run.id, proc.run.id):
            assert (await eventually(lambda r=rid: _terminal(eng, r), 10, "the run to end")).state == RunState.succeeded
        await eng.committer.flush()
    finally:
        await eng.stop()
    journal = (tmp_path / "d" / "launches.journal").read_text()
    assert f"+{proc.run.id}\n" in journal and f"-{proc.run.id}\n" in journal
    assert call.run.id not in journal


async def test_a_pending_http_run_left_by_a_crash_is_called_with_its_key(tmp_path: Path, server: FlakyServer) -> None:
    """What a kill -9 leaves of an HTTP run that may or may not have been called: recorded pending
    and no journal line. The restart calls it (again), with the run id as its Idempotency-Key."""
    from jobwire.model import Event, Run, Transition, run_id_for, utcnow
    from jobwire.store import Intake

    settings = Settings(data_dir=tmp_path / "d", http_allow_private=True)
    eng = Engine(settings)
    await eng.store.open()
    await eng.store.save_job(
        Job.model_validate({"name": "call", "target": {"type": "http", "url": server.url("/ok")}}), "api"
    )
    now, rid = utcnow(), run_id_for("call/api/k1")
    ev = Event(id="e1", job="call", trigger="api", source="api", received_at=now, run_id=rid)
    run = Run(
        id=rid, key="call/api/k1", job="call", trigger="api", event_id="e1", state=RunState.pending,
        created_at=now, history=[Transition(state=RunState.pending, at=now)],
    )
    await eng.store.record([Intake(ev, run)])
    await eng.store.close()
    eng = Engine(settings)
    await eng.start()
    try:
        done = await eventually(lambda: _terminal(eng, rid), 10, "the resumed run to end")
        assert done.state == RunState.succeeded and done.attempt == 1
        assert [r.headers["idempotency-key"] for r in server.requests if r.path == "/ok"] == [rid]
    finally:
        await eng.stop()


async def test_a_failing_sink_shows_failing_in_health_until_a_delivery_succeeds(
    tmp_path: Path, server: FlakyServer
) -> None:
    """A sink's worker keeps running while its deliveries fail (it retries each document): `/readyz`
    (and the dashboard's Health table, which reads it) shows its task failing with the last error,
    not ready-blocking, and running again once a delivery goes through."""
    sink = WebhookSinkSpec(url=server.url("/flaky"), secret="sink-secret")
    eng = Engine(Settings(data_dir=tmp_path / "d", sinks=[sink], shutdown_grace=timedelta(seconds=1)))
    await eng.start()

    def sink_task() -> dict[str, object]:
        return next(t for t in eng.health()["tasks"] if t["task"] == "jobwire-sink-webhook")

    try:
        assert sink_task()["state"] == "running"
        await eng.put_job(Job.model_validate({"name": "j", "target": {"type": "local", "command": ["true"]}}))
        await eng.trigger("j", {})
        failing = await eventually(lambda: (t := sink_task())["state"] == "failing" and t, 10, "sink failing")
        assert "503" in str(failing["last_error"]) and failing["failing_since"] is not None
        assert "sink-secret" not in str(failing["last_error"])
        assert eng.health()["ready"], "a failing sink does not make jobwire unready"
        await eventually(lambda: sink_task()["state"] == "running", 10, "sink delivering again")
    finally:
        await eng.stop()
