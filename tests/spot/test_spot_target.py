"""The spot target against moto's server: request → fulfilled → callback → terminated; callback
NOK; no callback before the timeout; and, through the fault-injecting double, pending, cancelled,
price-too-low and interrupted requests; the reconciler."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import AtTrigger, Run, RunState, run_id_for, time_run_key, utcnow
from jobwire.targets.spot.ec2 import Ec2
from tests.spot.conftest import instance_state, seed_states, spot_job, spot_target, state_of, warm_moto_ec2
from tests.support.ec2faults import FaultyEc2
from tests.support.waiting import eventually


async def test_at_time_request_fulfilled_callback_ok_terminated(engine: Engine) -> None:
    at = utcnow() + timedelta(milliseconds=300)
    job = spot_job("spot-ok").model_copy(update={"triggers": [AtTrigger(at=at)]})
    await engine.put_job(job)
    run_id = run_id_for(time_run_key("spot-ok", "at", at))  # the at trigger's run, once it is due
    run = await eventually(lambda: engine.runs.get(run_id), 10, "the at trigger's run")
    run = await state_of(engine, run_id, RunState.running)
    iid = run.target_ref
    assert iid and iid.startswith("i-")
    assert run.target_status["state"] == "Running"
    assert await instance_state(iid) in ("pending", "running")
    # the request and the instance carry the run's tags; the user data runs the image with Docker,
    # passing the env and the callback variables
    ec2 = Ec2(None, None)
    try:
        inst = (await ec2.describe_instances(ids=[iid]))[0]
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        assert tags["jobwire:run"] == run.id and tags["jobwire:job"] == "spot-ok"
        reqs = await ec2.describe_requests(tags={"jobwire:run": run.id})
        assert len(reqs) == 1 and reqs[0]["InstanceId"] == iid
    finally:
        await ec2.close()
    attr = boto3.client("ec2").describe_instance_attribute(InstanceId=iid, Attribute="userData")
    user_data = base64.b64decode(attr["UserData"]["Value"]).decode()
    assert "docker run --rm -e GREETING" in user_data and "busybox:1.36" in user_data
    assert "export GREETING=hello" in user_data
    assert f"export JOBWIRE_CALLBACK_URL=http://127.0.0.1:8080/api/v1/runs/{run.id}/callback" in user_data
    assert f"export JOBWIRE_CALLBACK_TOKEN={engine.callback_token(run.id)}" in user_data

    await engine.callback(run.id, engine.callback_token(run.id), True, "done", {"rows": 7})
    done = await state_of(engine, run.id, RunState.succeeded)
    assert seed_states(done) == ["Scheduled", "Requested", "Running", "FinishedOK", "TerminatedOK"]
    assert done.target_status["callback"]["data"] == {"rows": 7}, "what the job reported stays on the run"
    assert done.target_status["instance_id"] == iid
    assert await instance_state(iid) in ("shutting-down", "terminated")


async def test_callback_not_ok_terminates_and_fails(engine: Engine) -> None:
    await engine.put_job(spot_job("spot-nok"))
    adm = await engine.trigger("spot-nok", {})
    assert adm.run is not None
    run = await state_of(engine, adm.run.id, RunState.running)
    await engine.callback(run.id, engine.callback_token(run.id), False, "input was empty", {})
    done = await state_of(engine, run.id, RunState.failed)
    assert done.error.reason == "CallbackFailed" and done.error.message == "input was empty"
    assert seed_states(done)[-2:] == ["FinishedNOK", "Terminated"]
    assert await instance_state(run.target_ref) in ("shutting-down", "terminated")


async def test_no_callback_before_the_timeout_terminates_the_instance(engine: Engine) -> None:
    await engine.put_job(spot_job("spot-slow", timeout="1500ms"))
    adm = await engine.trigger("spot-slow", {})
    assert adm.run is not None
    run = await state_of(engine, adm.run.id, RunState.running)
    done = await state_of(engine, run.id, RunState.timed_out, RunState.failed)
    assert done.state == RunState.timed_out and done.error.reason == "Timeout"
    assert seed_states(done)[-1] == "Terminated"
    assert await instance_state(run.target_ref) in ("shutting-down", "terminated")


async def test_pending_request_waits_on_timers_then_runs(
    engine: Engine, faults: Callable[..., FaultyEc2]
) -> None:
    double = faults(
        [("open", "pending-evaluation"), ("open", "pending-fulfillment"), ("open", "pending-fulfillment")]
    )
    await engine.put_job(spot_job("spot-pending"))
    adm = await engine.trigger("spot-pending", {})
    assert adm.run is not None
    run = await state_of(engine, adm.run.id, RunState.running)
    assert double.calls.count("request_spot") == 1
    assert double.calls[:4] == ["request_spot", "describe_requests", "describe_requests", "describe_requests"]
    assert seed_states(run) == ["Scheduled", "Requested", "Running"]
    await engine.callback(run.id, engine.callback_token(run.id), True, None, {})
    await state_of(engine, run.id, RunState.succeeded)


async def test_cancelled_and_price_too_low_are_requested_again_with_the_reason(
    engine: Engine, faults: Callable[..., FaultyEc2]
) -> None:
    double = faults([("cancelled", "canceled-before-fulfillment"), ("open", "price-too-low")])
    await engine.put_job(spot_job("spot-again"))
    adm = await engine.trigger("spot-again", {})
    assert adm.run is not None
    run = await state_of(engine, adm.run.id, RunState.running)
    assert double.calls.count("request_spot") == 3
    assert double.tokens == [run.id, f"{run.id}-2", f"{run.id}-3"]
    assert double.requested_types == ["t3.micro", "t3.small", "t3.micro"]
    history = run.target_status["history"]
    assert [h["state"] for h in history] == ["Scheduled", "Requested", "Requested", "Requested", "Running"]
    assert "again after cancelled/canceled-before-fulfillment" in history[2]["reason"]
    assert "again after open/price-too-low" in history[3]["reason"]
    assert run.target_status["requests"] == 3
    await engine.callback(run.id, engine.callback_token(run.id), True, None, {})
    await state_of(engine, run.id, RunState.succeeded)


async def test_requests_are_bounded(engine: Engine, faults: Callable[..., FaultyEc2]) -> None:
    faults([("open", "capacity-not-available")] * 2)
    await engine.put_job(spot_job("spot-bounded", target={"max_requests": 2}))
    adm = await engine.trigger("spot-bounded", {})
    assert adm.run is not None
    done = await state_of(engine, adm.run.id, RunState.failed)
    assert done.error.reason == "SpotNotFulfilled"
    assert "capacity-not-available" in done.error.message
    assert seed_states(done) == ["Scheduled", "Requested", "Requested", "Terminated"]


async def test_interruption_notice_terminates_and_the_run_is_interrupted(
    engine: Engine, faults: Callable[..., FaultyEc2]
) -> None:
    double = faults()
    await engine.put_job(spot_job("spot-interrupted"))
    adm = await engine.trigger("spot-interrupted", {})
    assert adm.run is not None
    run = await state_of(engine, adm.run.id, RunState.running)
    double.interrupt = "marked-for-termination"
    done = await state_of(engine, run.id, RunState.interrupted, RunState.failed)
    assert done.state == RunState.interrupted and done.error.reason == "SpotInterruption"
    assert seed_states(done)[-1] == "Terminated"
    assert await instance_state(run.target_ref) in ("shutting-down", "terminated")


async def test_reconciler_terminates_instances_of_runs_not_in_progress(engine: Engine) -> None:
    target = spot_target(engine)
    ec2 = Ec2(None, None)
    try:
        tags = {"jobwire:run": "r-gone", "jobwire:target": "r-gone", "jobwire:owner": target.owner}
        req = await ec2.request_spot(
            "r-gone", {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"}, tags, None
        )
        iid = str(req["InstanceId"])
        await ec2.create_tags([iid], tags)
        other = {**tags, "jobwire:owner": "someone-else"}
        req2 = await ec2.request_spot(
            "r-other", {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"}, other, None
        )
        await ec2.create_tags([str(req2["InstanceId"])], other)
        assert await target.reconcile() == []  # first sight: a suspect, not yet ended
        ended = await target.reconcile()
        assert iid in ended
        assert await instance_state(iid) in ("shutting-down", "terminated")
        assert await instance_state(str(req2["InstanceId"])) == "running"  # another owner's
    finally:
        await ec2.close()


async def test_timeout_while_the_request_is_pending_cancels_it(
    engine: Engine, faults: Callable[..., FaultyEc2]
) -> None:
    double = faults([("open", "pending-evaluation")] * 1000)
    await double.real.describe_requests()  # moto's EC2 backend starts on its first call (~1 s)
    await engine.put_job(spot_job("spot-never", timeout="2s"))
    adm = await engine.trigger("spot-never", {})
    assert adm.run is not None
    done = await state_of(engine, adm.run.id, RunState.timed_out, RunState.failed)
    assert done.state == RunState.timed_out
    assert seed_states(done) == ["Scheduled", "Requested", "Terminated"], done.target_status
    assert "cancel_requests" in double.calls and not double.hidden  # moto forgets cancelled requests
    assert len(double.revoked) == 1
    assert await instance_state(double.revoked[0]) in ("shutting-down", "terminated")


async def test_cancel_while_the_request_answer_is_in_flight_terminates_its_instance(
    engine: Engine, faults: Callable[..., FaultyEc2]
) -> None:
    double = faults()
    double.answer_delay = 30
    await engine.put_job(spot_job("spot-inflight"))
    adm = await engine.trigger("spot-inflight", {})
    assert adm.run is not None
    ec2 = Ec2(None, None)
    try:

        async def made() -> list[dict] | None:
            return await ec2.describe_requests(tags={"jobwire:run": adm.run.id}) or None  # type: ignore[union-attr]

        reqs = await eventually(made, 10, "the request made in EC2")
        iid = str(reqs[0]["InstanceId"])  # moto fulfils at once
        await engine.cancel(adm.run.id)
        done = await state_of(engine, adm.run.id, RunState.cancelled)
        assert seed_states(done)[-1] == "Terminated"
        assert await instance_state(iid) in ("shutting-down", "terminated")
    finally:
        await ec2.close()


async def test_an_interrupted_spot_run_is_retried_per_policy(
    engine: Engine, faults: Callable[..., FaultyEc2]
) -> None:
    """An interruption is the cloud's doing, not the job's: with `retry`, a new attempt (a new spot
    request) follows. (jobwire's own shutdown records runs interrupted without a retry.)"""
    double = faults()
    await engine.put_job(spot_job("spot-again", retry={"max_attempts": 2, "backoff": "100ms"}))
    adm = await engine.trigger("spot-again", {})
    assert adm.run is not None
    await state_of(engine, adm.run.id, RunState.running)
    double.interrupt = "marked-for-termination"

    async def second_attempt() -> object:
        run = await engine.get_run(adm.run.id)  # type: ignore[union-attr]
        return run if run.attempt == 2 and run.state in (RunState.pending, RunState.running) else None

    again = await eventually(second_attempt, 20, "a second attempt after the interruption")
    assert isinstance(again, Run)
    double.interrupt = None
    states = [(t.state, t.attempt) for t in again.history]
    assert (RunState.interrupted, 1) in states and (RunState.pending, 2) in states


async def test_stopped_before_the_request_answer_came_back_the_next_start_adopts_it(
    spot_env: dict[str, str], tmp_path: Path
) -> None:
    """jobwire stops while RequestSpotInstances is made in EC2 but its answer not read (so nothing
    about it is recorded): the next start adopts that request and its instance by their tags — one
    instance, known by its type — instead of requesting again."""
    await warm_moto_ec2(spot_env.get("AWS_ENDPOINT_URL", ""))
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=1))
    first = Engine(settings)
    await first.start()
    double = FaultyEc2(Ec2(None, None))
    double.answer_delay = 60
    target = spot_target(first)
    target._clients.clear()
    target.ec2_factory = lambda region, endpoint: double  # type: ignore[assignment,return-value]
    await first.put_job(spot_job("spot-adopt"))
    adm = await first.trigger("spot-adopt", {})
    assert adm.run is not None
    run_id = adm.run.id
    ec2 = Ec2(None, None)
    try:

        async def made() -> list[dict[str, Any]] | None:
            return await ec2.describe_requests(tags={"jobwire:run": run_id}) or None

        [req] = await eventually(made, 10, "the request made in EC2")
        iid = str(req["InstanceId"])  # moto fulfils at once
        await first.stop()  # the attempt is left for adoption; the request's answer never read

        second = Engine(settings)
        await second.start()
        try:
            run = await state_of(second, run_id, RunState.running)
            assert run.target_ref == iid
            assert seed_states(run) == ["Scheduled", "Running"], "the first start never read its answer"
            assert run.target_status["instance_type"] == "t3.micro"
            assert run.target_status["history"][-1]["reason"] == f"instance {iid} (t3.micro)"
            assert len(await ec2.describe_requests(tags={"jobwire:run": run_id})) == 1, "not requested again"
            await second.callback(run_id, second.callback_token(run_id), True, None, {})
            done = await state_of(second, run_id, RunState.succeeded)
            assert seed_states(done)[-2:] == ["FinishedOK", "TerminatedOK"]
            assert await instance_state(iid) in ("shutting-down", "terminated")
        finally:
            await second.stop()
    finally:
        await ec2.close()


async def test_stopped_after_the_callback_before_the_terminate_the_next_start_terminates(
    spot_env: dict[str, str], tmp_path: Path
) -> None:
    """The container called back (recorded, answered 200: it will not call again) and jobwire
    stopped before TerminateInstances was sent: the next start must finish the run from the
    recorded callback — terminate the instance, TerminatedOK — not wait for a second callback
    until the job's timeout with the instance still running."""
    await warm_moto_ec2(spot_env.get("AWS_ENDPOINT_URL", ""))
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=1))
    first = Engine(settings)
    await first.start()
    target = spot_target(first)

    async def never(*_: Any) -> None:  # the terminate is never sent: jobwire "dies" first
        await asyncio.Event().wait()

    target._terminate = never  # type: ignore[method-assign]
    await first.put_job(spot_job("spot-called", timeout="1h"))
    adm = await first.trigger("spot-called", {})
    assert adm.run is not None
    run_id = adm.run.id
    run = await state_of(first, run_id, RunState.running)
    iid = run.target_ref
    assert iid
    await first.callback(run_id, first.callback_token(run_id), True, "done", {"rows": 7})
    await eventually(
        lambda: first.runs[run_id].target_status.get("state") == "FinishedOK", 10, "FinishedOK recorded"
    )
    await first.stop()
    assert await instance_state(iid) in ("pending", "running"), "not terminated by the first start"

    second = Engine(settings)
    await second.start()
    try:
        done = await state_of(second, run_id, RunState.succeeded, timeout=20)
        assert seed_states(done)[-2:] == ["FinishedOK", "TerminatedOK"]
        assert seed_states(done).count("FinishedOK") == 1
        assert done.target_status["callback"]["data"] == {"rows": 7}, "kept on the run"
        assert await instance_state(iid) in ("shutting-down", "terminated")
    finally:
        await second.stop()
