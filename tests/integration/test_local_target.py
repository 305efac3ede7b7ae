"""The local target with real processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from jobwire.config import Settings
from jobwire.model import Job, Parameter, ParamType, RunState
from jobwire.model import LocalTarget as LocalSpec
from jobwire.targets import startfence
from jobwire.targets.local import LocalTarget
from tests.support.fake_context import FakeContext, wait_until

PY = sys.executable
ECHO_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"
ECHO_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
T = TypeVar("T")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,  # what `jobwire serve` runs on
}
HOSTILE = ["; rm -rf /", "$(id)", "`id`", "a b\nc", "{{other}}", "' \" \\", "--flag=x"]


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[LocalTarget]:
    t = LocalTarget(Settings(data_dir=tmp_path))
    await t.start()
    yield t
    await t.close()


def job(command: list[str] | str, **kw: Any) -> Job:
    params = kw.pop(
        "parameters",
        [Parameter(name="value", default="v"), Parameter(name="n", type=ParamType.integer, default=1)],
    )
    return Job(name="proc", target=LocalSpec(command=command, **kw), parameters=params)


async def run(
    target: LocalTarget, j: Job, params: dict[str, Any] | None = None, **kw: Any
) -> tuple[Any, FakeContext]:
    ctx = FakeContext(j, params if params is not None else {"value": "v", "n": 1}, **kw)
    return await target.execute(ctx), ctx


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_param_is_one_literal_argv_element(target: LocalTarget, hostile: str) -> None:
    outcome, ctx = await run(
        target, job([PY, "-c", ECHO_ARGV, "{{value}}", "x{{n}}y", "{{n}}"]), {"value": hostile, "n": 42}
    )
    assert outcome.state == RunState.succeeded, ctx.text
    assert json.loads(ctx.text) == [hostile, "x42y", "42"]
    assert ctx.ref is not None and int(ctx.ref) > 0


async def test_shell_gets_params_only_through_env(target: LocalTarget) -> None:
    j = job('printf "%s|%s" "$JOBWIRE_PARAM_VALUE" "$JOBWIRE_PARAM_N"', shell=True)
    outcome, ctx = await run(target, j, {"value": "$(id); rm -rf /tmp/nothing", "n": 5})
    assert outcome.state == RunState.succeeded
    assert ctx.text == "$(id); rm -rf /tmp/nothing|5"


def test_shell_command_cannot_be_templated() -> None:
    with pytest.raises(ValueError, match="environment"):
        LocalSpec(command="echo {{value}}", shell=True)


async def test_stdout_and_stderr_are_captured(target: LocalTarget) -> None:
    code = "import sys; print('to-out', flush=True); print('to-err', file=sys.stderr, flush=True)"
    outcome, ctx = await run(target, job([PY, "-c", code]))
    assert outcome.state == RunState.succeeded
    assert "to-out" in ctx.text and "to-err" in ctx.text


async def test_large_output_is_streamed(target: LocalTarget) -> None:
    outcome, ctx = await run(target, job([PY, "-c", "import sys; sys.stdout.write('y' * 1_000_000)"]))
    assert outcome.state == RunState.succeeded
    assert len(ctx.log_data) == 1_000_000
    assert ctx.calls.count("log") > 1


async def test_non_zero_exit(target: LocalTarget) -> None:
    outcome, _ = await run(target, job([PY, "-c", "raise SystemExit(7)"]))
    assert outcome.state == RunState.failed
    assert outcome.exit_code == 7
    assert outcome.retryable is True
    assert outcome.error is not None
    assert (outcome.error.message, outcome.error.reason, outcome.error.code) == (
        "exited with code 7",
        "NonZeroExit",
        7,
    )


async def test_killed_by_signal(target: LocalTarget) -> None:
    outcome, _ = await run(target, job([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]))
    assert outcome.state == RunState.failed
    assert outcome.error is not None
    assert outcome.error.reason == "Signal"
    assert outcome.error.code == -9
    assert "SIGKILL" in outcome.error.message


async def test_command_not_found(target: LocalTarget, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    outcome, ctx = await run(target, job([missing, "{{value}}"]))
    assert outcome.state == RunState.failed
    assert outcome.retryable is False
    assert outcome.error is not None
    assert outcome.error.reason == "CommandNotFound"
    assert missing in outcome.error.message
    assert ctx.started_calls == []


async def test_not_executable(target: LocalTarget, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    outcome, _ = await run(target, job([str(script)]))
    assert outcome.error is not None and outcome.error.reason == "CommandNotFound"
    assert outcome.retryable is False


async def test_a_start_fenced_after_its_deadline_runs_nothing_then_starts_once(
    target: LocalTarget, tmp_path: Path
) -> None:
    """The engine's check passed, then a pause (SIGSTOP) outlasted the heartbeat deadline before the
    spawn: the child itself sees the deadline passed and does not run the command; the launch waits
    for the engine again (here: a fresh deadline) and starts once (targets/startfence.py)."""
    marks = tmp_path / "marks"
    ctx = FakeContext(job(["sh", "-c", f"echo ran >> {marks}"]), {"value": "v", "n": 1})
    ctx.deadlines = [time.monotonic() - 0.01, time.monotonic() + 60]
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded, outcome
    assert marks.read_text() == "ran\n"
    assert ctx.startable_calls == 2 and len(ctx.started_calls) == 2
    assert ctx.log_data == startfence.REFUSAL  # the refusal is on the run's output


async def test_a_fence_whose_clocks_disagree_is_turned_off_not_looped(
    target: LocalTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that refuses while the engine's own clock says the deadline is still ahead means
    /proc/uptime is not this process's boot-time clock (a virtualised /proc): respawning would
    loop for ever, so the fence is switched off and the command started once, unfenced."""
    fenced = startfence.fenced
    monkeypatch.setattr(startfence, "AVAILABLE", True)
    monkeypatch.setattr(startfence, "fenced", lambda a, d, e, c: fenced(a, time.monotonic() - 1, e, c))
    marks = tmp_path / "marks"
    ctx = FakeContext(job(["sh", "-c", f"echo ran >> {marks}"]), {"value": "v", "n": 1})
    ctx.deadlines = [time.monotonic() + 60, time.monotonic() + 60]
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded, outcome
    assert marks.read_text() == "ran\n"
    assert startfence.AVAILABLE is False and ctx.startable_calls == 2


async def test_a_start_before_its_deadline_runs_the_command_as_given(target: LocalTarget) -> None:
    ctx = FakeContext(job([PY, "-c", ECHO_ARGV, "{{value}}", "$1"]), {"value": "a b; $(id)", "n": 1})
    ctx.deadlines = [time.monotonic() + 60]
    outcome = await target.execute(ctx)
    assert outcome.state == RunState.succeeded, ctx.text
    assert json.loads(ctx.text) == ["a b; $(id)", "$1"]
    assert len(ctx.started_calls) == 1


@pytest.mark.parametrize("argv", [["no-such-program-jw"], ["./no-such-program-jw"]])
async def test_a_fenced_command_that_cannot_run_says_so(target: LocalTarget, argv: list[str]) -> None:
    ctx = FakeContext(job(argv), {"value": "v", "n": 1})
    ctx.deadlines = [time.monotonic() + 60]
    outcome = await target.execute(ctx)
    assert outcome.error is not None and outcome.error.reason == "CommandNotFound", outcome
    assert ctx.started_calls == []


async def test_a_job_exiting_125_is_not_taken_for_a_refusal(target: LocalTarget) -> None:
    ctx = FakeContext(job(["sh", "-c", "exit 125"]), {"value": "v", "n": 1})
    ctx.deadlines = [time.monotonic() + 60]
    outcome = await target.execute(ctx)
    assert outcome.exit_code == 125 and len(ctx.started_calls) == 1


async def test_missing_cwd(target: LocalTarget, tmp_path: Path) -> None:
    outcome, _ = await run(target, job([PY, "-c", "pass"], cwd=str(tmp_path / "nope")))
    assert outcome.state == RunState.failed
    assert outcome.retryable is False


async def test_cwd_and_target_env(target: LocalTarget, tmp_path: Path) -> None:
    j = job(
        [PY, "-c", "import os; print(os.getcwd(), os.environ['GREETING'])"],
        cwd=str(tmp_path),
        env={"GREETING": "hi-{{value}}"},
    )
    outcome, ctx = await run(target, j, {"value": "bob", "n": 1})
    assert outcome.state == RunState.succeeded
    assert ctx.text.split() == [str(tmp_path.resolve()), "hi-bob"]


async def test_env_has_run_vars_and_does_not_leak_scheduler_secrets(
    target: LocalTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBWIRE_API_TOKEN", "scheduler-token-must-not-leak")
    monkeypatch.setenv("JOBWIRE_DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.setenv("UNRELATED_VAR", "kept")
    outcome, ctx = await run(target, job([PY, "-c", ECHO_ENV]), {"value": "v", "n": 3}, attempt=2)
    assert outcome.state == RunState.succeeded
    env = json.loads(ctx.text)
    assert "JOBWIRE_API_TOKEN" not in env
    assert "JOBWIRE_DATABASE_URL" not in env
    assert "scheduler-token-must-not-leak" not in ctx.text
    assert "UNRELATED_VAR" not in env  # the operator's environment is not inherited (inherit_env opts in)
    assert env["PATH"] == os.environ["PATH"]
    assert env["JOBWIRE_RUN_ID"] == ctx.target_name == f"{ctx.run.id}-2"
    assert env["JOBWIRE_EVENT_ID"] == ctx.run.event_id
    assert env["JOBWIRE_JOB"] == "proc"
    assert env["JOBWIRE_ATTEMPT"] == "2"
    assert env["JOBWIRE_CALLBACK_URL"] == ctx.callback_url
    assert env["JOBWIRE_CALLBACK_TOKEN"] == ctx.callback_token
    assert env["JOBWIRE_PARAM_VALUE"] == "v"
    assert env["JOBWIRE_PARAM_N"] == "3"


async def test_resumed_run_is_lost_without_launching(target: LocalTarget, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    outcome, ctx = await run(target, job([PY, "-c", f"open({str(marker)!r}, 'w').close()"]), resumed=True)
    assert outcome.state == RunState.failed
    assert outcome.error is not None
    assert (outcome.error.message, outcome.error.reason) == ("lost: scheduler restarted", "Lost")
    assert ctx.started_calls == []
    assert not marker.exists()


async def test_sigterm_ignored_means_sigkill_after_grace(target: LocalTarget) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('armed', flush=True); time.sleep(600)"
    )
    ctx = FakeContext(job([PY, "-c", code], kill_grace=timedelta(milliseconds=300)), {"value": "v", "n": 1})
    task = asyncio.create_task(target.execute(ctx))
    await ctx.wait_log("armed")
    pid = int(ctx.ref or 0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert loop.time() - t0 >= 0.25
    await wait_until(lambda: _gone(pid), 10, "the process to be gone")


async def test_leftover_background_process_is_cleaned_up(target: LocalTarget) -> None:
    """The background process inherits the output pipe: the run still ends when the command does."""
    code = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(p.pid, flush=True)"
    )
    outcome, ctx = await run(target, job([PY, "-c", code]))
    assert outcome.state == RunState.succeeded
    pid = int(ctx.text.strip())
    await wait_until(lambda: _gone(pid), 10, "the leftover process to be gone")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def _reaped(pid: int) -> bool:
    """True when our child `pid` has been waited for: no zombie left (and nothing reaped here)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not Path(f"/proc/{pid}").exists()
    return False


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def _fds_after_warm_up(target: LocalTarget) -> set[str]:
    """The descriptors open once a first run is done (libuv keeps one /dev/null per loop from its
    first stream on, for its EMFILE trick)."""
    await run(target, job([PY, "-c", "pass"]))
    return _open_fds()


def on_loop(loop: str, main: Callable[[LocalTarget], Awaitable[T]], tmp_path: Path) -> T:
    """Run `main(target)` on a fresh event loop of the given kind, as `jobwire serve` does."""

    async def wrapper() -> T:
        t = LocalTarget(Settings(data_dir=tmp_path))
        await t.start()
        try:
            return await main(t)
        finally:
            await t.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(wrapper())


@pytest.fixture(params=list(LOOPS))
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_exit_code_and_output_and_no_zombie(loop_kind: str, tmp_path: Path) -> None:
    code = (
        "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True); raise SystemExit(3)"
    )

    async def main(target: LocalTarget) -> tuple[Any, FakeContext, set[str], set[str]]:
        assert type(asyncio.get_running_loop()).__module__.startswith(loop_kind)
        before = await _fds_after_warm_up(target)
        outcome, ctx = await run(target, job([PY, "-c", code]))
        return outcome, ctx, before, _open_fds()

    outcome, ctx, fds_before, fds_after = on_loop(loop_kind, main, tmp_path)
    assert outcome.state == RunState.failed and outcome.exit_code == 3
    assert outcome.error is not None and outcome.error.reason == "NonZeroExit"
    assert ctx.text == "out\nerr\n"  # one pipe for both, in write order
    assert _reaped(int(ctx.ref or 0))
    assert fds_after == fds_before  # pidfd and pipe closed


def test_cancel_stops_the_group_and_reaps_the_leader(loop_kind: str, tmp_path: Path) -> None:
    code = (
        "import json, os, subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(json.dumps([os.getpid(), c.pid]), flush=True); time.sleep(600)"
    )

    async def main(target: LocalTarget) -> list[int]:
        before = await _fds_after_warm_up(target)
        ctx = FakeContext(job([PY, "-c", code], kill_grace=timedelta(seconds=2)), {"value": "v", "n": 1})
        task = asyncio.create_task(target.execute(ctx))
        await ctx.wait_log("]")
        pids: list[int] = json.loads(ctx.text)
        assert pids[0] == int(ctx.ref or 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert _reaped(pids[0])  # the leader is reaped before execute ends
        await wait_until(lambda: _gone(pids[1]), 10, "the child to be gone")
        await wait_until(lambda: _open_fds() == before, 10, "the pidfd and the pipe to be closed")
        return pids

    pids = on_loop(loop_kind, main, tmp_path)
    assert all(_gone(pid) for pid in pids)


def test_failing_engine_callback_stops_and_reaps_the_process(loop_kind: str, tmp_path: Path) -> None:
    class Failing(FakeContext):
        async def started(self, ref: str | None, status: Any = None) -> None:
            await super().started(ref, status)
            raise RuntimeError("store is down")

    async def main(target: LocalTarget) -> int:
        ctx = Failing(job([PY, "-c", "import time; time.sleep(600)"]), {"value": "v", "n": 1})
        with pytest.raises(RuntimeError, match="store is down"):
            await target.execute(ctx)
        return int(ctx.ref or 0)

    pid = on_loop(loop_kind, main, tmp_path)
    assert _reaped(pid)


def test_spawn_failure_leaves_no_descriptor(loop_kind: str, tmp_path: Path) -> None:
    async def main(target: LocalTarget) -> tuple[list[Any], set[str], set[str]]:
        before = await _fds_after_warm_up(target)
        missing, _ = await run(target, job([str(tmp_path / "no-such-program")]))
        nul, _ = await run(target, job([PY, "-c", "pass", "a\0b"]))
        return [missing, nul], before, _open_fds()

    (missing, nul), fds_before, fds_after = on_loop(loop_kind, main, tmp_path)
    assert missing.error.reason == "CommandNotFound"
    assert nul.error.reason == "InvalidArgument"
    assert fds_after == fds_before


def test_without_pidfd_a_thread_waits(
    loop_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)

    async def main(target: LocalTarget) -> tuple[Any, FakeContext]:
        return await run(target, job([PY, "-c", "print('hi')"]))

    outcome, ctx = on_loop(loop_kind, main, tmp_path)
    assert outcome.state == RunState.succeeded
    assert ctx.text == "hi\n"
    assert _reaped(int(ctx.ref or 0))
