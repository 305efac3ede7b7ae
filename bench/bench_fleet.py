"""Benchmark row for the runner fleet (`--role scheduler` + `--role runner`; docs/fleet.md): HTTP
jobs against a local keep-alive server, 1 / 2 / 4 runners, runs per second; floor 2 runners ≥ 1.6× one.

What it measures: a scheduler (SQLite, `jobwire serve --role scheduler`) holds N recorded runs of an
http job, all published to the work queue before any runner starts; then k runners are started
(each with `SLOTS` slots) and drain it. The far end answers every call after `LATENCY` (a remote
service's response time, in its own process, keep-alive): a runner's capacity is slots / latency,
the bound a fleet exists to lift — more runners, more calls in flight. Rate = the runs that ended
between the 10th and the 90th percentile of their recorded `finished_at`, over that span (so the
runners' start-up, which is not simultaneous, does not count). Every run is checked `succeeded`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench_core import Ctx, Row

SLOTS = 4
LATENCY = 0.05


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    from bench.bench_core import _proc_sample

    return _proc_sample(pid)[0]


def _rate(runs: list[dict[str, Any]]) -> float:
    ends = sorted(datetime.fromisoformat(str(r["finished_at"])).timestamp() for r in runs)
    lo, hi = int(len(ends) * 0.1), int(len(ends) * 0.9)
    span = ends[hi] - ends[lo]
    return (hi - lo) / span if span > 0 else float("inf")


def fleet_scaling(ctx: Ctx) -> list[Row]:
    import httpx

    from bench.bench_amqp import _vhost
    from bench.bench_core import NoopServer, Row, loadavg, settle
    from tests.support.fleet import metric, runner, scheduler
    from tests.support.server import all_runs
    from tests.support.waiting import eventually_sync

    n = 600 if ctx.quick else 2000
    counts = (1, 2, 4)
    far = NoopServer(LATENCY).__enter__()  # answers each call LATENCY late, in its own process
    port = far.port
    rates: dict[int, float] = {}
    loads: dict[int, str] = {}
    cpu: dict[int, dict[str, float]] = {}
    try:
        for k in counts:
            base = ctx.tmp / f"fleet-{k}"
            base.mkdir()
            jobs = base / "jobs.yaml"
            jobs.write_text(
                "jobs:\n  - name: call\n    target: {type: http, method: POST, timeout: 10s,"
                f" url: 'http://127.0.0.1:{port}/hook'}}\n"
            )
            vhost = _vhost()
            try:
                settle(ctx)
                env = {"JOBWIRE_AMQP_INTAKE": "false"}
                with scheduler(base / "s", jobs, vhost.url, **env) as sched, sched.client() as c:
                    ctx.progress(f"{k} runner(s): recording {n} runs, then starting the runners")

                    async def post_all() -> None:
                        sem = asyncio.Semaphore(32)
                        async with httpx.AsyncClient(base_url=sched.url + "/api/v1", timeout=60) as ac:

                            async def one() -> None:
                                async with sem:
                                    r = await ac.post("/jobs/call/runs", json={})
                                    assert r.status_code == 201, r.text

                            await asyncio.gather(*(one() for _ in range(n)))

                    asyncio.run(post_all())
                    runners = [
                        runner(base / f"r{i}", vhost.url, slots=SLOTS, **env) for i in range(k)
                    ]
                    t0 = time.monotonic()
                    assert sched.proc is not None
                    sched_cpu0 = _cpu(sched.proc.pid)
                    for r in runners:
                        r.start()
                    try:

                        # a scrape, not the list of runs: reading 2,000 runs ten times a second
                        # would be most of the scheduler's work
                        def done() -> bool:
                            return metric(sched.url, "jobwire_runs_finished_total") >= n

                        eventually_sync(done, timeout=600, what=f"{n} runs ended")
                        cpu[k] = {
                            "scheduler_ms_per_run": (_cpu(sched.proc.pid) - sched_cpu0) * 1000 / n,
                            "runners_ms_per_run": sum(_cpu(r.proc.pid) for r in runners if r.proc) * 1000 / n,
                        }
                    finally:
                        for r in runners:
                            r.stop()
                    loads[k] = loadavg()
                    runs = all_runs(c, "call")
                    bad = [x["state"] for x in runs if x["state"] != "succeeded"]
                    if bad:
                        raise RuntimeError(f"{len(bad)} runs did not succeed: {sorted(set(bad))}")
                    rates[k] = _rate(runs)
                    ctx.progress(
                        f"{k} runner(s): {rates[k]:.0f} runs/s (drained in {time.monotonic() - t0:.1f}s, "
                        f"load {loads[k]}; CPU per run: scheduler {cpu[k]['scheduler_ms_per_run']:.2f} ms, "
                        f"runners {cpu[k]['runners_ms_per_run']:.2f} ms incl. their start-up)"
                    )
            finally:
                vhost.delete()
    finally:
        far.__exit__()
    ctx.data["fleet"] = {"runs": n, "slots": SLOTS, "latency_s": LATENCY, "runs_per_s": rates, "load": loads,
        "cpu": cpu}
    rows = [
        Row(
            f"runner fleet, HTTP jobs ({LATENCY * 1000:g} ms far end, {SLOTS} slots each), {k} runner(s)",
            f"{rates[k]:,.0f} runs/s (load {loads[k]})",
            "—",
            None,
        )
        for k in counts
    ]
    ratio = rates[2] / rates[1]
    rows.append(Row("  … runner fleet: 2 runners ÷ 1", f"{ratio:.2f}×", "≥ 1.6×", ratio >= 1.6))
    return rows
