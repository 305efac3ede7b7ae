"""The Target contract, run against every target: one suite, parametrized over `local` and `http`.

Each case supplies a job whose run succeeds, one that fails and one that hangs, plus how to see
(from outside the target) that the work was stopped and that the target-side name was used.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from jobwire.config import Settings
from jobwire.model import HttpTarget as HttpSpec
from jobwire.model import Job, RunState
from jobwire.model import LocalTarget as LocalSpec
from jobwire.targets import TARGETS, Target, build_targets, target_class
from tests.support.fake_context import FakeContext, RecordingServer, wait_until

PY = sys.executable

HANG_SCRIPT = r"""
import json, os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(json.dumps({"pid": os.getpid(), "child": child.pid}), flush=True)
time.sleep(600)
"""


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


@dataclass
class Case:
    kind: str
    ok: Job
    fail: Job
    hang: Job
    ready: Callable[[FakeContext], Awaitable[None]]
    """Wait until the hanging work is really under way."""
    assert_stopped: Callable[[FakeContext], Awaitable[None]]
    assert_named: Callable[[FakeContext], None]
    """The target-side name (ctx.target_name) reached the work."""


async def _local_case(tmp_path: Path) -> AsyncIterator[Case]:
    pids: dict[str, dict[str, int]] = {}

    async def ready(ctx: FakeContext) -> None:
        await ctx.wait_log("}")
        pids[ctx.run.id] = json.loads(ctx.text.strip().splitlines()[0])

    async def stopped(ctx: FakeContext) -> None:
        info = pids[ctx.run.id]
        for name in ("pid", "child"):
            await wait_until(lambda p=info[name]: process_gone(p), 10, f"{name} {info[name]} to be gone")

    def named(ctx: FakeContext) -> None:
        assert ctx.text.strip() == ctx.target_name

    grace = timedelta(seconds=2)
    yield Case(
        kind="local",
        ok=Job(
            name="local-ok",
            target=LocalSpec(
                command=[PY, "-c", "import os; print(os.environ['JOBWIRE_RUN_ID'])"], kill_grace=grace
            ),
        ),
        fail=Job(name="local-fail", target=LocalSpec(command=[PY, "-c", "raise SystemExit(3)"])),
        hang=Job(name="local-hang", target=LocalSpec(command=[PY, "-c", HANG_SCRIPT], kill_grace=grace)),
        ready=ready,
        assert_stopped=stopped,
        assert_named=named,
    )


async def _http_case(tmp_path: Path) -> AsyncIterator[Case]:
    server = await RecordingServer().start()

    async def ready(ctx: FakeContext) -> None:
        await wait_until(lambda: server.hanging == 1, 10, "the server to hold the request")

    async def stopped(ctx: FakeContext) -> None:
        await wait_until(lambda: server.disconnects == 1, 10, "the server to see the client go")

    def named(ctx: FakeContext) -> None:
        # the Idempotency-Key is the run id for every attempt; the attempt rides beside it
        assert [r.headers["idempotency-key"] for r in server.requests] == [ctx.run.id]
        assert [r.headers["jobwire-attempt"] for r in server.requests] == [str(ctx.run.attempt)]

    def spec(path: str) -> HttpSpec:
        return HttpSpec(url=server.url(path), allow_private=True, timeout=timedelta(seconds=60))

    try:
        yield Case(
            kind="http",
            ok=Job(name="http-ok", target=spec("/status/200")),
            fail=Job(name="http-fail", target=spec("/status/500")),
            hang=Job(name="http-hang", target=spec("/hang")),
            ready=ready,
            assert_stopped=stopped,
            assert_named=named,
        )
    finally:
        await server.stop()


@pytest.fixture(params=["local", "http"])
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Case]:
    factory = {"local": _local_case, "http": _http_case}[request.param]
    gen = factory(tmp_path)
    yield await gen.__anext__()
    await gen.aclose()


@pytest.fixture
async def target(case: Case, tmp_path: Path) -> AsyncIterator[Target]:
    t = TARGETS[case.kind](Settings(data_dir=tmp_path))
    await t.start()
    yield t
    await t.close()


def test_registry_builds_every_target(tmp_path: Path) -> None:
    built = build_targets(Settings(data_dir=tmp_path))
    assert set(built) == {"local", "http", "kubernetes", "spot"}
    for kind, t in built.items():
        assert t.kind == kind
        assert isinstance(t, target_class(kind))
        # only work that goes on without jobwire is left running over a restart
        assert t.survives_restart is (kind in ("kubernetes", "spot"))


async def test_success(case: Case, target: Target) -> None:
    ctx = FakeContext(case.ok)
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded, outcome
    assert outcome.error is None
    assert len(ctx.started_calls) == 1
    assert ctx.calls[0] == "started"


async def test_failure(case: Case, target: Target) -> None:
    ctx = FakeContext(case.fail)
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.failed
    assert outcome.error is not None and outcome.error.reason
    assert outcome.error.message
    assert len(ctx.started_calls) == 1
    assert ctx.calls[0] == "started"


async def test_target_name_reaches_the_work(case: Case, target: Target) -> None:
    ctx = FakeContext(case.ok)
    assert (await target.execute(ctx)).state == RunState.succeeded
    case.assert_named(ctx)


async def test_each_attempt_reaches_the_work_under_its_name(case: Case, target: Target) -> None:
    ctx = FakeContext(case.ok, attempt=3)
    assert ctx.target_name.endswith("-3")
    assert (await target.execute(ctx)).state == RunState.succeeded
    case.assert_named(ctx)


async def test_cancellation_stops_the_work(case: Case, target: Target) -> None:
    ctx = FakeContext(case.hang)
    task = asyncio.create_task(target.execute(ctx))
    await ctx.wait_started()
    await case.ready(ctx)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 15)
    await case.assert_stopped(ctx)
    assert len(ctx.started_calls) == 1


async def test_concurrent_runs_are_independent(case: Case, target: Target) -> None:
    ctxs = [FakeContext(case.ok) for _ in range(5)] + [FakeContext(case.fail) for _ in range(3)]
    outcomes = await asyncio.gather(*(target.execute(c) for c in ctxs))
    assert [o.state for o in outcomes] == [RunState.succeeded] * 5 + [RunState.failed] * 3
    assert all(len(c.started_calls) == 1 for c in ctxs)
