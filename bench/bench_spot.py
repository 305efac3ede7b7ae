"""Benchmark rows for the `spot` target (seed 002), against moto's server over HTTP:

* due time → request sent: jobs with an `at` trigger; the clock starts at the trigger's time and
  stops when `RequestSpotInstances` is handed to the client (the scheduler's wake-up, the run's
  durable recording, dispatch and building the request, not EC2's answer);
* callback → terminate sent: from `engine.callback(ok)` on a running spot run to
  `TerminateInstances` handed to the client.

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

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def request_spot(self, token: str, *a: Any) -> Any:
        self.requested[token] = time.time()
        return await self.real.request_spot(token, *a)

    async def terminate(self, ids: list[str]) -> None:
        for i in ids:
            self.terminated.setdefault(i, time.time())
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
            JOBWIRE_SPOT_RECONCILE_INTERVAL="0",
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
    try:
        start = datetime.now(UTC) + timedelta(seconds=1)
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
            iid = run.target_ref
            assert iid
            t0 = time.time()
            await engine.callback(run_id, engine.callback_token(run_id), True, None, {})
            while iid not in stamped.terminated:
                await asyncio.sleep(0.001)
            called.append(stamped.terminated[iid] - t0)
    finally:
        await engine.stop()
    return due, called
