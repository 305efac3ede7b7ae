"""Benchmark rows for the `spot` target (seed 002), against moto's server over HTTP:

* due time → request sent: jobs with an `at` trigger; the clock starts at the trigger's time and
  stops when botocore sends `RequestSpotInstances` (`before-send`: the scheduler's wake-up, the
  run's durable recording, dispatch, building and signing the request — not EC2's answer);
* callback → terminate sent: from `engine.callback(ok)` on a running spot run to botocore sending
  `TerminateInstances`.

Runs are 100 ms apart and each is called back as soon as it runs, so requests do not overlap.

The engine runs in this process (the EC2 client is wrapped to timestamp the calls); moto runs in
its own process, started here.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench_core import Ctx, Row


class _Stamped:
    """Delegates to the real client; notes the wall time each request/terminate call is sent."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.region = real.region
        self.endpoint_url = real.endpoint_url
        self.requested: dict[str, float] = {}
        self.terminated: dict[str, float] = {}
        self.current_token = ""
        self.current_ids: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def _hooked(self) -> None:
        """Stamp when botocore hands the HTTP request over (after signing), not when it is asked."""
        client = await self.real.ec2()
        if not getattr(client, "_bench_hooked", False):
            client.meta.events.register("before-send.ec2.RequestSpotInstances", self._sent_request)
            client.meta.events.register("before-send.ec2.TerminateInstances", self._sent_terminate)
            client._bench_hooked = True

    def _sent_request(self, **_: Any) -> None:
        self.requested.setdefault(self.current_token, time.time())

    def _sent_terminate(self, **_: Any) -> None:
        for i in self.current_ids:
            self.terminated.setdefault(i, time.time())

    async def request_spot(self, token: str, *a: Any) -> Any:
        await self._hooked()
        self.current_token = token
        return await self.real.request_spot(token, *a)

    async def terminate(self, ids: list[str]) -> None:
        await self._hooked()
        self.current_ids = list(ids)
        await self.real.terminate(ids)


def spot_latency(ctx: Ctx) -> list[Row]:
    from bench.bench_core import p50_p99_row, run_loop, settle, summary
    from tests.support.aws import MotoServer

    n = 20 if ctx.quick else 100
    moto = MotoServer(ctx.tmp / "moto.log").start()
    saved = dict(os.environ)
    try:
        os.environ.update(moto.env)
        os.environ.update(
            JOBWIRE_SPOT_AMI="ami-12c6146b",
            JOBWIRE_SPOT_WATCH_INTERVAL="10s",
            JOBWIRE_SPOT_RECONCILE_INTERVAL="10m",  # its first pass opens the EC2 client ahead of time
        )
        settle(ctx)
        ctx.progress(f"{n} at-trigger spot runs, 100 ms apart, each called back once running")
        due_ms, cb_ms = run_loop(lambda: _measure(ctx, n))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        moto.stop()
    ctx.data["spot_due_to_request"] = summary(due_ms)
    ctx.data["spot_callback_to_terminate"] = summary(cb_ms)
    return [
        p50_p99_row("spot: due time → request sent", due_ms, 50),
        p50_p99_row("spot: callback → terminate sent", cb_ms, 50),
    ]


async def _measure(ctx: Ctx, n: int) -> tuple[list[float], list[float]]:
    import asyncio

    from jobwire.config import Settings
    from jobwire.engine import Engine
    from jobwire.model import Job, RunState, run_id_for, time_run_key
    from jobwire.targets.spot import SpotTarget
    from jobwire.targets.spot.ec2 import Ec2

    engine = Engine(Settings(_env_file=None, data_dir=ctx.tmp / "data"))
    target = engine.targets["spot"]
    assert isinstance(target, SpotTarget)
    stamped = _Stamped(Ec2(None, None))
    target.ec2_factory = lambda region, endpoint: stamped  # type: ignore[assignment,return-value]
    await engine.start()
    due: list[float] = []
    called: list[float] = []
    to_attempt: list[float] = []
    try:
        start = datetime.now(UTC) + timedelta(seconds=3)  # after the EC2 client is opened (1 s in)
        runs: list[tuple[str, datetime]] = []
        for i in range(n):
            at = start + timedelta(milliseconds=100 * i)
            job = Job.model_validate(
                {
                    "name": f"spot-{i}",
                    "triggers": [{"at": at.isoformat()}],
                    "target": {"type": "spot", "image": "busybox"},
                }
            )
            await engine.put_job(job)
            runs.append((run_id_for(time_run_key(job.name, "at", at)), at))
        for run_id, at in runs:
            deadline = time.monotonic() + 30
            while True:
                run = engine.runs.get(run_id)
                if run is not None and run.state == RunState.running:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"spot run {run_id} did not start")
                await asyncio.sleep(0.01)
            due.append(stamped.requested[run_id] - at.timestamp())
            scheduled = datetime.fromisoformat(run.target_status["history"][0]["at"]).timestamp()
            to_attempt.append(scheduled - at.timestamp())
            iid = run.target_ref
            assert iid
            t0 = time.time()
            await engine.callback(run_id, engine.callback_token(run_id), True, None, {})
            while iid not in stamped.terminated:
                await asyncio.sleep(0.001)
            called.append(stamped.terminated[iid] - t0)
    finally:
        await engine.stop()
    ctx.data["spot_due_to_attempt_started"] = _summary(to_attempt)
    return due, called


def _summary(xs: list[float]) -> dict[str, float | None]:
    from bench.bench_core import summary

    return summary(xs)
