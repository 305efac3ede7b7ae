"""The `local` target: a process on this machine.

The command is executed directly (argv; each element rendered with the run's parameters, so a
parameter is always exactly one argument and never reaches a shell). With `shell: true` the
command is one string given to `/bin/sh -c` untouched; parameters then reach it only as
`JOBWIRE_PARAM_<NAME>` environment variables.

The process gets its own session (and so its own process group): cancelling the run terminates
the whole tree — SIGTERM to the group, `kill_grace`, then SIGKILL. Processes the command leaves
behind after it exits are cleaned up the same way.

A local run cannot survive a restart of jobwire (`survives_restart = False`): see `_lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
from typing import Any

import structlog

from jobwire.model import LocalTarget as LocalSpec
from jobwire.model import RunError, RunState
from jobwire.params import ParamError, param_env, render_argv, render_text
from jobwire.targets.base import Outcome, RunContext, Target

log = structlog.get_logger(__name__)

_POLL = 0.05  # how often a terminating process group is checked for emptiness
_DRAIN_AFTER_EXIT = 2.0  # how long output may still arrive once the process group is gone
_NOT_RUNNABLE = {errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.ENOEXEC, errno.EISDIR, errno.ELOOP}


def _group_alive(pgid: int) -> bool:
    """Whether process group `pgid` still has a member that is not a zombie.

    Zombies count as gone: a killed orphan is reparented to init and lingers until init reaps it,
    which some container inits do only now and then. On Linux /proc tells zombies apart;
    elsewhere any member counts. Blocking (reads /proc): call it in a thread.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its uid: still there
        pass
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _lost() -> Outcome:
    """A process started by a previous jobwire cannot be adopted: its stdout/stderr pipe ended with
    the old scheduler (the output is gone and the process gets EPIPE/SIGPIPE on its next write),
    only a parent can collect a process's exit status, and its recorded pid may since have been
    reused by an unrelated process, so even signalling it is unsafe. The attempt is failed as
    lost; the job's retry policy decides whether it runs again."""
    return Outcome(
        state=RunState.failed,
        error=RunError(message="lost: scheduler restarted", reason="Lost"),
        retryable=True,
    )


class LocalTarget(Target):
    """`cancel()` is the inherited no-op: cancelling the run's task is what stops the process tree."""

    kind = "local"
    survives_restart = False

    async def execute(self, ctx: RunContext) -> Outcome:
        spec = ctx.job.target
        if not isinstance(spec, LocalSpec):
            return Outcome(
                state=RunState.failed,
                retryable=False,
                error=RunError(message=f"job {ctx.job.name} has no local target", reason="WrongTarget"),
            )
        if ctx.resumed:
            log.warning("local run lost on restart", run_id=ctx.run.id, job=ctx.job.name)
            return _lost()

        try:
            argv = self._argv(spec, ctx.params)
            env = self._env(spec, ctx)
        except ParamError as exc:
            return Outcome(
                state=RunState.failed,
                retryable=False,
                error=RunError(message=str(exc), reason="InvalidParameters"),
            )
        if spec.cwd is not None and not await asyncio.to_thread(os.path.isdir, spec.cwd):
            return Outcome(
                state=RunState.failed,
                retryable=False,
                error=RunError(message=f"working directory {spec.cwd} does not exist", reason="InvalidCwd"),
            )
        loop = asyncio.get_running_loop()
        proto = _Protocol(ctx, loop)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: proto,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
            )
        except ValueError as exc:  # a NUL byte in an argument or environment value
            return Outcome(
                state=RunState.failed,
                retryable=False,
                error=RunError(message=f"cannot start the command: {exc}", reason="InvalidArgument"),
            )
        except OSError as exc:
            # Name the command as written (a parameter in command[0] is refused at definition time).
            shown = spec.command if isinstance(spec.command, str) else spec.command[0]
            why = exc.strerror or type(exc).__name__
            if exc.errno in _NOT_RUNNABLE:
                return Outcome(
                    state=RunState.failed,
                    retryable=False,
                    error=RunError(
                        message=f"command not found or not executable: {shown} ({why})",
                        reason="CommandNotFound",
                        code=exc.errno,
                    ),
                )
            return Outcome(  # out of processes, file descriptors, memory: may pass
                state=RunState.failed,
                error=RunError(message=f"cannot start {shown}: {why}", reason="SpawnError", code=exc.errno),
            )

        pid = transport.get_pid()
        pgid = pid  # start_new_session: the process leads its own session and process group
        grace = spec.kill_grace.total_seconds()
        log.info("local process started", run_id=ctx.run.id, job=ctx.job.name, pid=pid)
        try:
            await ctx.started(str(pid))
            # Not `Process.wait()`: it also waits for the output pipe to close, which a background
            # process that inherited it can hold open forever.
            await asyncio.shield(proto.exited)
            returncode = transport.get_returncode()
            assert returncode is not None
            if await asyncio.to_thread(_group_alive, pgid):
                log.info("stopping processes left behind", run_id=ctx.run.id, job=ctx.job.name, pid=pid)
                await _terminate(proto, pgid, grace)
            with contextlib.suppress(TimeoutError):  # the rest of the output, if still in flight
                await asyncio.wait_for(asyncio.shield(proto.closed), _DRAIN_AFTER_EXIT)
        except BaseException:
            # Cancellation (timeout, user cancel, shutdown) or an error in the engine's callbacks:
            # stop the whole process tree, then let the exception go on (the engine decides the state).
            try:
                await _terminate(proto, pgid, grace)
            finally:
                _signal_group(pgid, signal.SIGKILL)
                log.info("local process stopped", run_id=ctx.run.id, job=ctx.job.name, pid=pid)
            raise
        finally:
            transport.close()

        log.info("local process exited", run_id=ctx.run.id, job=ctx.job.name, returncode=returncode)
        if returncode == 0:
            return Outcome(state=RunState.succeeded, exit_code=0)
        if returncode < 0:
            signum = -returncode
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            return Outcome(
                state=RunState.failed,
                exit_code=returncode,
                error=RunError(message=f"killed by {name}", reason="Signal", code=returncode),
            )
        return Outcome(
            state=RunState.failed,
            exit_code=returncode,
            error=RunError(message=f"exited with code {returncode}", reason="NonZeroExit", code=returncode),
        )

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _argv(spec: LocalSpec, params: dict[str, Any]) -> list[str]:
        if spec.shell:
            assert isinstance(spec.command, str)  # checked by the model
            return ["/bin/sh", "-c", spec.command]
        assert isinstance(spec.command, list)
        return render_argv(spec.command, params)

    @staticmethod
    def _env(spec: LocalSpec, ctx: RunContext) -> dict[str, str]:
        # The scheduler's own settings (API tokens, database URL) are JOBWIRE_* variables: never inherited.
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
        env.update({k: render_text(v, ctx.params) for k, v in spec.env.items()})
        env.update(param_env(ctx.params))
        env.update(
            {
                "JOBWIRE_RUN_ID": ctx.target_name,
                "JOBWIRE_EVENT_ID": ctx.run.event_id,
                "JOBWIRE_JOB": ctx.job.name,
                "JOBWIRE_ATTEMPT": str(ctx.run.attempt),
                "JOBWIRE_CALLBACK_URL": ctx.callback_url or "",
                "JOBWIRE_CALLBACK_TOKEN": ctx.callback_token,
            }
        )
        return env


class _Protocol(asyncio.SubprocessProtocol):
    """Streams output to the run log; tells when the process exited and when all output is read."""

    def __init__(self, ctx: RunContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self.ctx.log(data if isinstance(data, bytes) else data.encode())

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:  # process exited and pipes closed
        if not self.closed.done():
            self.closed.set_result(None)


async def _terminate(proto: _Protocol, pgid: int, grace: float) -> None:
    """SIGTERM the group; wait until it is empty (or `grace` passed); SIGKILL what is left."""
    _signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    try:
        # No event tells when a process group becomes empty: poll it. (The leader is reaped by
        # asyncio's child watcher as soon as it exits, so it does not linger as a member.)
        while loop.time() < deadline and await asyncio.to_thread(_group_alive, pgid):  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
    finally:
        _signal_group(pgid, signal.SIGKILL)
    try:
        await asyncio.wait_for(asyncio.shield(proto.exited), timeout=max(grace, 5.0))
    except TimeoutError:
        log.warning("process did not exit after SIGKILL", pgid=pgid)
