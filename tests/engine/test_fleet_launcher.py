"""The scheduler's fleet launcher (`engine/fleet.py`) against an in-memory wire: what it publishes,
how runners' results drive the run (acked only after they are committed; a repeated result changes
nothing), retries as new attempts, and what a restart publishes again — decided by the journal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from tests.support.waiting import eventually


class FakeMessage:
    def __init__(self, link: FakeLink, body: bytes) -> None:
        self.link = link
        self.body = body

    async def ack(self, multiple: bool = False) -> None:
        """Record what the store held for the result's run when it was acknowledged."""
        doc = json.loads(self.body)
        run = await self.link.engine.store.get_run(doc["run_id"]) if self.link.engine else None
        self.link.acked.append((doc["kind"], run.state if run else None))


class FakeDelivery:
    def __init__(self, message: FakeMessage) -> None:
        self.body = message.body
        self.redelivered = False
        self.message = message


class FakeLink:
    """The wire's interface (`jobwire.sources.amqp.fleet.Link`) in memory. `confirm` cleared: a
    publish hangs (sent, never confirmed)."""

    def __init__(self) -> None:
        self.work: list[dict[str, Any]] = []
        self.cancels = "jobwire.work.cancels"
        self.cancelled: list[dict[str, Any]] = []
        self.acked: list[tuple[str, RunState | None]] = []
        self.results: asyncio.Queue[bytes] = asyncio.Queue()
        self.confirm = asyncio.Event()
        self.confirm.set()
        self.engine: Engine | None = None
        self.connected = True
        self.probes: list[dict[str, Any]] = []
        self.answer_probes = True

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def depth(self, queue: str) -> tuple[int, int]:
        return (self.results.qsize(), 1) if queue.endswith("results") else (len(self.work), 1)

    async def publish(
        self, queue: str, messages: list[tuple[str, bytes]], on_confirmed: Callable[[str], None] | None = None
    ) -> None:
        if queue == self.cancels:
            self.cancelled += [json.loads(body) for _, body in messages]
            return
        docs = [json.loads(body) for _, body in messages]
        for doc in docs:
            if doc.get("kind") == "probe":  # a runner takes it once what is ahead of it is taken
                self.probes.append(doc)
                if self.answer_probes:
                    self.results.put_nowait(json.dumps(doc).encode())
        self.work += [d for d in docs if d.get("kind") != "probe"]
        await self.confirm.wait()
        for mid, _ in messages:
            if on_confirmed is not None:
                on_confirmed(mid)

    async def consume(self, queue: str, prefetch: int, on_message: Callable[[Any], Awaitable[None] | None]) -> None:
        while True:
            body = await self.results.get()
            on_message(FakeDelivery(FakeMessage(self, body)))

    def result(self, work: dict[str, Any], kind: str, **fields: Any) -> None:
        """A runner's result for `work` (naming its message, as runners do, when `work` has one)."""
        doc = {"v": 1, "kind": kind, "run_id": work["run"]["id"], "attempt": work["run"]["attempt"], **fields}
        if "name" in work:
            doc["name"] = work["name"]
        self.results.put_nowait(json.dumps(doc).encode())


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> FakeLink:
    fake = FakeLink()
    monkeypatch.setattr("jobwire.engine.fleet.link_for", lambda *a: fake)
    monkeypatch.setattr("jobwire.engine.fleet_copies.PROBE_GRACE", 0.05)
    return fake


def scheduler(tmp_path: Path) -> Engine:
    return Engine(
        Settings(_env_file=None, data_dir=tmp_path / "data", role="scheduler", shutdown_grace=timedelta(seconds=1))
    )


@pytest.fixture
async def engine(tmp_path: Path, link: FakeLink) -> AsyncIterator[Engine]:
    eng = link.engine = scheduler(tmp_path)
    await eng.start()
    yield eng
    await eng.stop()


async def started(engine: Engine) -> str:
    admission = await engine.trigger("call", {})
    assert admission.run is not None
    return admission.run.id


HTTP_JOB = {"name": "call", "target": {"type": "http", "url": "http://example.com/hook", "timeout": "5s"}}
OK = {"state": "succeeded", "http_status": 200, "retryable": True}


async def test_a_run_is_published_then_ended_by_its_runners_results(engine: Engine, link: FakeLink) -> None:
    await engine.put_job(Job.model_validate({**HTTP_JOB, "triggers": [{"type": "api"}]}))
    run_id = await started(engine)
    await eventually(lambda: link.work, 5, "the work message")
    work = link.work[0]
    assert work["name"] == run_id and work["run"]["id"] == run_id and work["resumed"] is False
    assert work["job"]["target"]["url"] == "http://example.com/hook"
    assert "triggers" not in work["job"], "the runner gets what running needs, not the job's triggers"
    assert work["callback_url"].endswith(f"/api/v1/runs/{run_id}/callback")

    link.result(work, "started", started_at="2026-01-01T00:00:00+00:00", runner="r1")
    await eventually(lambda: engine.runs[run_id].state == RunState.running, 5, "running")
    link.result(work, "outcome", outcome=OK, log="aGVsbG8=")
    run = await eventually(lambda: run_id not in engine.runs and engine.get_run(run_id), 5, "ended")
    assert run.state == RunState.succeeded and run.http_status == 200
    await eventually(lambda: len(link.acked) == 2, 5, "both results acknowledged")
    assert link.acked == [("started", RunState.running), ("outcome", RunState.succeeded)], (
        "each result acknowledged only once what it changed is in the store"
    )
    # the same outcome again (a runner died before acking its work; another ran it too): nothing changes
    link.result(work, "outcome", outcome={"state": "failed", "retryable": False})
    await eventually(lambda: len(link.acked) == 3, 5, "the repeat acknowledged")
    assert (await engine.get_run(run_id)).state == RunState.succeeded
    assert engine.attempts.count == 0


async def test_a_retryable_failure_is_published_again_as_the_next_attempt(engine: Engine, link: FakeLink) -> None:
    spec = {**HTTP_JOB, "triggers": [{"type": "api"}], "retry": {"max_attempts": 2, "backoff": "10ms"}}
    await engine.put_job(Job.model_validate(spec))
    run_id = await started(engine)
    await eventually(lambda: link.work, 5, "attempt 1")
    link.result(link.work[0], "outcome", outcome={"state": "failed", "http_status": 503, "retryable": True})
    await eventually(lambda: len(link.work) == 2, 5, "attempt 2 published")
    assert link.work[1]["name"] == f"{run_id}-2" and link.work[1]["run"]["attempt"] == 2
    link.result(link.work[1], "outcome", outcome=OK)
    run = await eventually(lambda: run_id not in engine.runs and engine.get_run(run_id), 5, "ended")
    assert run.state == RunState.succeeded and run.attempt == 2


async def test_after_a_restart_only_unconfirmed_attempts_are_published_again(
    tmp_path: Path, link: FakeLink
) -> None:
    first = link.engine = scheduler(tmp_path)
    await first.start()
    await first.put_job(Job.model_validate({**HTTP_JOB, "triggers": [{"type": "api"}]}))
    confirmed = await started(first)  # its outcome will wait in the results queue
    waiting = await started(first)  # confirmed, still in the work queue: no result yet
    await eventually(lambda: len(link.work) == 2, 5, "two confirmed")
    for rid in (confirmed, waiting):
        await eventually(lambda rid=rid: f"{rid}@" in first.attempts.journal, 5, "its confirm noted")
    link.confirm.clear()  # from now on RabbitMQ takes messages but no confirm comes back
    unconfirmed = await started(first)
    await eventually(lambda: len(link.work) == 3, 5, "the third publish sent")
    await first.stop()  # like a crash for the fleet: runs in the fleet stay pending in the store

    link.work.clear()
    link.confirm.set()
    again = link.engine = scheduler(tmp_path)
    # one result of the confirmed run waited in the broker while the scheduler was down
    link.result({"run": {"id": confirmed, "attempt": 1}}, "outcome", outcome=OK)
    await again.start()
    try:
        await eventually(lambda: link.work, 5, "the unconfirmed one published again")
        assert [w["name"].partition("#")[0] for w in link.work] == [unconfirmed]
        assert link.work[0]["name"] != unconfirmed, "published again as a copy, under a name of its own"
        assert link.work[0]["resumed"] is True
        assert (await again.get_run(confirmed)).state == RunState.succeeded
        assert (await again.get_run(waiting)).state == RunState.pending
        assert again.attempts.count == 2, "both still in the fleet's hands"
    finally:
        await again.stop()


async def test_a_cancel_is_recorded_and_sent_to_the_runners(engine: Engine, link: FakeLink) -> None:
    await engine.put_job(Job.model_validate({**HTTP_JOB, "triggers": [{"type": "api"}]}))
    run_id = await started(engine)
    await eventually(lambda: link.work, 5, "the work message")
    link.result(link.work[0], "started", started_at="2026-01-01T00:00:00+00:00", runner="r1")
    await eventually(lambda: engine.runs[run_id].state == RunState.running, 5, "running")
    run = await engine.cancel(run_id, "stop it")
    assert run.state == RunState.cancelled
    assert [(c["name"], c["run_id"], c["reason"]) for c in link.cancelled] == [(run_id, run_id, "stop it")]
    # the runner stopped it and reports so: the run ended already, nothing changes
    link.result(link.work[0], "outcome", outcome={"state": "cancelled", "retryable": False})
    await eventually(lambda: len(link.acked) == 2, 5, "the outcome acknowledged")
    stored = await engine.get_run(run_id)
    assert stored.state == RunState.cancelled
    assert [h.state for h in stored.history].count(RunState.cancelled) == 1
    assert engine.attempts.count == 0


async def stored_end(engine: Engine, run_id: str) -> Any:
    """The run as stored once its end is committed (None before)."""
    run = await engine.store.get_run(run_id)
    return run if run is not None and run.state.terminal else None


WAITING_JOB = {**HTTP_JOB, "triggers": [{"type": "api"}], "callback": {"wait": True, "timeout": "1m"}}


async def test_callback_wait_keeps_the_run_running_until_the_job_calls_back(tmp_path: Path, link: FakeLink) -> None:
    """The runner's outcome ends the call, not the run: the wait is recorded before the outcome is
    acknowledged, survives a restart (nothing is published again), and the callback ends it."""
    first = link.engine = scheduler(tmp_path)
    await first.start()
    await first.put_job(Job.model_validate(WAITING_JOB))
    run_id = await started(first)
    await eventually(lambda: link.work, 5, "the work message")
    link.result(link.work[0], "started", started_at="2026-01-01T00:00:00+00:00", runner="r1")
    await eventually(lambda: len(link.acked) == 1, 5, "started acknowledged")
    link.result(link.work[0], "outcome", outcome={**OK, "http_status": 202})
    await eventually(lambda: len(link.acked) == 2, 5, "the outcome acknowledged")
    assert link.acked[1] == ("outcome", RunState.running), "still running when its outcome is acked"
    stored = await first.get_run(run_id)
    assert stored.state == RunState.running and "awaiting_callback" in stored.target_status
    assert first.attempts.count == 1
    await first.stop()

    link.work.clear()
    again = link.engine = scheduler(tmp_path)
    await again.start()
    try:
        assert again.attempts.count == 1, "waiting again after the restart"
        await again.callback(run_id, again.callback_token(run_id), True, "done", {"rows": 3})
        run = await eventually(lambda: stored_end(again, run_id), 5, "ended")
        assert run.state == RunState.succeeded and run.http_status == 202
        assert run.target_status["callback"]["data"] == {"rows": 3}
        assert "awaiting_callback" not in run.target_status
        assert link.work == [], "a run waiting for its callback is not published again"
    finally:
        await again.stop()


async def test_callback_wait_times_out_and_a_failing_callback_stops_the_runner(
    engine: Engine, link: FakeLink
) -> None:
    await engine.put_job(Job.model_validate({**WAITING_JOB, "callback": {"wait": True, "timeout": "200ms"}}))
    silent = await started(engine)
    await eventually(lambda: link.work, 5, "the work message")
    link.result(link.work[0], "outcome", outcome=OK)
    run = await eventually(lambda: stored_end(engine, silent), 10, "timed out")
    assert run.state == RunState.failed and run.error is not None and run.error.reason == "CallbackTimeout"

    failing = await started(engine)  # calls back ok: false while its runner still runs it
    await eventually(lambda: len(link.work) == 2, 5, "the second work message")
    await engine.callback(failing, engine.callback_token(failing), False, "input is empty", {})
    run = await eventually(lambda: stored_end(engine, failing), 5, "failed")
    assert run.state == RunState.failed and run.error is not None and run.error.reason == "CallbackFailed"
    assert [c["run_id"] for c in link.cancelled] == [failing], "its runner is told to stop it"


async def test_a_running_run_this_replica_never_published_is_published_again_at_start(
    tmp_path: Path, link: FakeLink
) -> None:
    """A run claimed at start from a dead replica (its launch journal is not here) may wait for a
    result that went to the dead replica: published again, flagged resumed. One published from
    here (in the journal) is not."""
    first = link.engine = scheduler(tmp_path)
    await first.start()
    await first.put_job(Job.model_validate({**HTTP_JOB, "triggers": [{"type": "api"}]}))
    ours, theirs = await started(first), await started(first)
    await eventually(lambda: len(link.work) == 2, 5, "both published")
    for work in link.work:
        link.result(work, "started", started_at="2026-01-01T00:00:00+00:00", runner="r1")
    await eventually(lambda: all(first.runs[r].state == RunState.running for r in (ours, theirs)), 5, "running")
    await eventually(lambda: len(link.acked) >= 1, 5, "started acknowledged")
    await first.stop()
    # `theirs` as if published by another replica: this data folder's journal never had it
    first.attempts.journal.open()
    first.attempts.forget(theirs)
    first.attempts.journal.close()

    link.work.clear()
    again = link.engine = scheduler(tmp_path)
    await again.start()
    try:
        await eventually(lambda: link.work, 5, "published again")
        assert [(w["name"].partition("#")[0], w["resumed"]) for w in link.work] == [(theirs, True)]
        assert again.attempts.count == 2
    finally:
        await again.stop()


async def _restart_with_one_in_doubt(tmp_path: Path, link: FakeLink) -> tuple[str, dict[str, Any], Engine]:
    """A scheduler publishes one run's work message and stops before RabbitMQ's confirm (a crash
    for the fleet); a new one starts on the same data folder. Returns the run id, the first work
    message (taken out of `link.work`) and the started new scheduler."""
    first = link.engine = scheduler(tmp_path)
    await first.start()
    await first.put_job(Job.model_validate({**HTTP_JOB, "triggers": [{"type": "api"}]}))
    link.confirm.clear()  # RabbitMQ takes the message, the crash comes before its confirm
    run_id = await started(first)
    await eventually(lambda: len(link.work) == 1, 5, "the publish sent")
    original = link.work.pop()
    await first.stop()
    link.confirm.set()
    again = link.engine = scheduler(tmp_path)
    await again.start()
    return run_id, original, again


@pytest.mark.parametrize("first_to_report", ["original", "copy"])
async def test_of_two_copies_of_an_attempt_one_runs_and_the_other_is_cancelled(
    tmp_path: Path, link: FakeLink, first_to_report: str
) -> None:
    """A restart publishes an unconfirmed attempt again, as a copy: the first message was in the
    queue after all. The first result names the copy that runs; the other is cancelled by its own
    name (its runner acknowledges it unrun) and whatever it still reports is ignored."""
    run_id, original, again = await _restart_with_one_in_doubt(tmp_path, link)
    try:
        await eventually(lambda: link.work, 5, "published again as a copy")
        copy = link.work[0]
        assert copy["name"].startswith(f"{run_id}#") and original["name"] == run_id
        winner, loser = (original, copy) if first_to_report == "original" else (copy, original)
        link.result(winner, "started", started_at="2026-01-01T00:00:00+00:00", runner="r1")
        await eventually(lambda: link.cancelled, 5, "the other copy cancelled")
        assert [c["name"] for c in link.cancelled] == [loser["name"]]
        assert again.runs[run_id].state == RunState.running
        # the loser ran anyway (taken at the same moment): what it reports changes nothing
        link.result(loser, "outcome", outcome={"state": "failed", "retryable": False})
        await eventually(lambda: len(link.acked) == 2, 5, "the loser's result acknowledged")
        assert again.runs[run_id].state == RunState.running
        link.result(winner, "outcome", outcome=OK)
        run = await eventually(lambda: run_id not in again.runs and again.get_run(run_id), 5, "ended")
        assert run.state == RunState.succeeded
        assert again.attempts.count == 0
    finally:
        await again.stop()


async def test_a_cancel_of_a_run_with_a_copy_cancels_both_messages(tmp_path: Path, link: FakeLink) -> None:
    run_id, _, again = await _restart_with_one_in_doubt(tmp_path, link)
    try:
        await eventually(lambda: link.work, 5, "published again as a copy")
        run = await again.cancel(run_id, "stop it")
        assert run is not None and run.state == RunState.cancelled
        await eventually(lambda: len(link.cancelled) == 2, 5, "both cancels sent")
        assert {c["name"] for c in link.cancelled} == {run_id, link.work[0]["name"]}
    finally:
        await again.stop()


async def test_a_probe_goes_first_and_an_attempt_whose_first_message_reports_meanwhile_is_not_copied(
    tmp_path: Path, link: FakeLink
) -> None:
    """After a restart, attempts in doubt wait for the probe: a runner answers it only once the
    messages ahead of it were handed out, so a first message that was in the queue reports first —
    then no copy is published; one that reports nothing by the probe's answer (+ grace) is copied."""
    first = link.engine = scheduler(tmp_path)
    await first.start()
    await first.put_job(Job.model_validate({**HTTP_JOB, "triggers": [{"type": "api"}]}))
    link.confirm.clear()
    in_queue, never_sent = await asyncio.gather(started(first), started(first))  # one commit, one batch
    await eventually(lambda: len(link.work) == 2, 5, "both publishes sent")
    original = next(w for w in link.work if w["name"] == in_queue)
    link.work.clear()
    await first.stop()

    link.confirm.set()
    link.answer_probes = False
    again = link.engine = scheduler(tmp_path)
    await again.start()
    try:
        await eventually(lambda: link.probes, 5, "the probe sent")
        assert link.work == [], "no copy before the probe is answered"
        link.result(original, "started", started_at="2026-01-01T00:00:00+00:00", runner="r1")
        await eventually(lambda: again.runs[in_queue].state == RunState.running, 5, "running")
        link.results.put_nowait(json.dumps(link.probes[0]).encode())  # the probe's answer
        await eventually(lambda: link.work, 5, "the copy of the one never sent")
        assert [w["name"].partition("#")[0] for w in link.work] == [never_sent]
        assert link.cancelled == []
    finally:
        await again.stop()
