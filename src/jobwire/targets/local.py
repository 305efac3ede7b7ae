"""The `local` target: a process on this machine.

The command is executed directly (argv; each element rendered with the run's parameters, so a
parameter is always exactly one argument and never reaches a shell). With `shell: true` the
command is one string given to `/bin/sh -c` untouched; parameters then reach it only as
`JOBWIRE_PARAM_<NAME>` environment variables.

The process gets its own session (and so its own process group): cancelling the run terminates
the whole tree — SIGTERM to the group, `kill_grace`, then SIGKILL. Processes the command leaves
behind after it exits are cleaned up the same way.

Spawning does not go through the event loop (`loop.subprocess_exec`): under uvloop that is libuv's
fork(), whose cost grows with the scheduler's memory (page tables are copied: ~15 ms from a
160 MB process). `subprocess.Popen` uses vfork() on Linux (no preexec_fn, no user/group change),
which costs the same ~0.3 ms however large the scheduler is, on any event loop. Nothing else reaps
a Popen child (libuv reaps only the pids it spawned; asyncio's child watcher only those of
`subprocess_exec`), so the exit is ours to collect, event-driven: a pidfd (`os.pidfd_open`) in the
loop's readers becomes readable when the process exits, and its status is reaped right then. Where
pidfds are unavailable a thread waits for the process instead. Output (stdout and stderr share one
pipe) is read through `loop.connect_read_pipe`.

A local run cannot survive a restart of jobwire (`survives_restart = False`): see `_lost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any

import structlog

from jobwire.model import LocalTarget as LocalSpec
from jobwire.model import RunError, RunState
from jobwire.params import ParamError, param_env, render_argv, render_text
from jobwire.targets import startfence
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
    if not _group_exists(pgid):
        return False
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


def _group_exists(pgid: int) -> bool:
    """Whether any process (zombies included) is in group `pgid`: one syscall, fine on the loop.
    Usually false once the leader is reaped, which spares the /proc scan of `_group_alive`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its uid: still there
        pass
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _ended(ctx: RunContext, returncode: int) -> Outcome:
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
        while True:
            outcome = await self._launch(ctx, spec, argv, env)
            if outcome is not None:
                return outcome
            # the child found the deadline passed and did not run the command (startfence.py)
            log.warning("local process not started: the heartbeat deadline had passed", run_id=ctx.run.id)

    async def _launch(
        self, ctx: RunContext, spec: LocalSpec, argv: list[str], env: dict[str, str]
    ) -> Outcome | None:
        """Spawn the process and see it to its end: its outcome, or None where a start fence refused it."""
        deadline = await ctx.until_startable()  # nothing yields from here to the spawn
        fence = deadline if startfence.AVAILABLE else None
        try:
            started = argv if fence is None else startfence.fenced(argv, fence, env, spec.cwd)
            proc, read_end = _spawn(started, env, spec.cwd)
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

        pid = proc.pid
        pgid = pid  # start_new_session: the process leads its own session and process group
        grace = spec.kill_grace.total_seconds()
        loop = asyncio.get_running_loop()
        exit_watch = _ExitWatch(proc, loop)  # from here on the process is reaped whatever happens
        output = _Output(ctx, loop, keep_head=fence is not None)
        transport: asyncio.ReadTransport | None = None
        try:
            # Started first: the process runs from here, and its output waits in the pipe until the
            # transport is connected (connecting takes a loop iteration the start need not wait for).
            await ctx.started(str(pid))
            log.info("local process started", run_id=ctx.run.id, job=ctx.job.name, pid=pid)
            transport, _ = await loop.connect_read_pipe(lambda: output, read_end)
            # Only the exit, not the end of the output: a background process that inherited the
            # pipe can hold it open forever.
            await asyncio.shield(exit_watch.exited)
            returncode = proc.returncode
            assert returncode is not None
            if _group_exists(pgid) and await asyncio.to_thread(_group_alive, pgid):
                log.info("stopping processes left behind", run_id=ctx.run.id, job=ctx.job.name, pid=pid)
                await _terminate(exit_watch, pgid, grace)
            with contextlib.suppress(TimeoutError):  # the rest of the output, if still in flight
                await asyncio.wait_for(asyncio.shield(output.closed), _DRAIN_AFTER_EXIT)
        except BaseException:
            # Cancellation (timeout, user cancel, shutdown) or an error in the engine's callbacks:
            # stop the whole process tree, then let the exception go on (the engine decides the state).
            try:
                await _terminate(exit_watch, pgid, grace)
            finally:
                _signal_group(pgid, signal.SIGKILL)
                log.info("local process stopped", run_id=ctx.run.id, job=ctx.job.name, pid=pid)
            raise
        finally:
            exit_watch.close()
            if transport is not None:
                transport.close()  # the transport closes the pipe
            else:
                read_end.close()
        if fence is not None and startfence.refused(returncode, bytes(output.head)):
            if time.monotonic() < fence - 0.05:  # refused before the deadline: the clocks disagree
                startfence.AVAILABLE = False
                log.error("start fence disabled: /proc/uptime disagrees with CLOCK_BOOTTIME here")
            return None
        return _ended(ctx, returncode)

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
        # A minimal environment: the basics a process expects, plus what the job names. The
        # operator's other variables (a sink's secret, cloud credentials) and jobwire's own
        # JOBWIRE_* settings are not inherited: run logs are readable with a read-only token.
        env = inherited_env(os.environ, spec.inherit_env)
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


BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
"""Variables every local process gets from jobwire's environment (with `LC_*`)."""


def inherited_env(environ: Mapping[str, str], names: list[str]) -> dict[str, str]:
    """The part of `environ` a local process inherits: BASE_ENV, `LC_*`, and `names` (`NAME` or
    `PREFIX_*`) — never `JOBWIRE_*`."""
    exact = set(BASE_ENV) | {n for n in names if not n.endswith("*")}
    prefixes = ("LC_", *(n[:-1] for n in names if n.endswith("*")))
    return {
        k: v
        for k, v in environ.items()
        if not k.startswith("JOBWIRE_") and (k in exact or k.startswith(prefixes))
    }


def _spawn(argv: list[str], env: dict[str, str], cwd: str | None) -> tuple[subprocess.Popen[bytes], _ReadEnd]:
    """Start the process, stdout and stderr on one new pipe; return it and the pipe's read end.

    Blocking, but for no longer than a vfork and an exec (~0.3 ms): called on the loop. Whatever
    would make CPython fork instead (preexec_fn, a user or group change) stays out. Raises
    OSError (exec failures come back from the child with their errno; the child is reaped by
    Popen) or ValueError (a NUL byte), with no descriptor left open.
    """
    read_fd, write_fd = os.pipe()  # both close-on-exec: the child gets the write end as 1 and 2 only
    try:
        read_end = _ReadEnd(read_fd)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)  # the child has its copy; the pipe ends when the last writer closes it
    return proc, read_end


class _ReadEnd:
    """The parent's end of the output pipe, handed to `loop.connect_read_pipe`: a file-like object
    whose `close()` closes the descriptor only if it still is this pipe.

    asyncio's pipe transport closes the descriptor through `close()`. uvloop's has libuv close it
    and then calls `close()` too, when the number may already belong to a file another thread has
    just opened. No other descriptor of this process refers to the pipe (the write end is closed
    right after the spawn), so "same device and inode" means "still ours".
    """

    def __init__(self, fd: int) -> None:
        st = os.fstat(fd)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            st = os.fstat(fd)
        except OSError:  # closed already
            return
        if (st.st_dev, st.st_ino) == self._ident:
            os.close(fd)


class _Output(asyncio.Protocol):
    """Streams the output pipe to the run log; `closed` tells when every writer has closed it
    (the process and whatever it started that inherited the pipe) and all of it is read."""

    def __init__(self, ctx: RunContext, loop: asyncio.AbstractEventLoop, keep_head: bool = False) -> None:
        self.ctx = ctx
        self.closed: asyncio.Future[None] = loop.create_future()
        self.head = bytearray()
        """The first bytes of the output, where kept (enough to tell a start fence's refusal)."""
        self._keep = len(startfence.REFUSAL) + 1 if keep_head else 0

    def data_received(self, data: bytes) -> None:
        if len(self.head) < self._keep:
            self.head += data[: self._keep - len(self.head)]
        self.ctx.log(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _ExitWatch:
    """Reaps the process the moment it exits, then resolves `exited` (`proc.returncode` is set).

    Event-driven: a pidfd in the loop's readers turns readable when the process exits (Linux ≥ 5.3;
    the process cannot be reaped by anyone else, so its pid cannot be reused before that). Where
    there is no pidfd, a thread blocks in `proc.wait()` instead. Never raises: once constructed,
    the process is reaped on every path, `close()` included.
    """

    def __init__(self, proc: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.proc = proc
        self.exited: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):  # not Linux, an old kernel, or a seccomp filter
            self._wait_in_thread()
            return
        try:
            loop.add_reader(self._pidfd, self._on_exit)
        except Exception:  # a loop without add_reader
            os.close(self._pidfd)
            self._pidfd = -1
            self._wait_in_thread()

    def _on_exit(self) -> None:
        self._stop_reader()
        if self.proc.poll() is None:  # readable, yet nothing to reap: do not spin on it
            self._wait_in_thread()
            return
        self._resolve()

    def _stop_reader(self) -> None:
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _wait_in_thread(self) -> None:
        # A future rather than a task (`asyncio.to_thread`): the loop's shutdown cancels pending
        # tasks, and the wait must go on until the process is reaped.
        waiting = self._loop.run_in_executor(None, self.proc.wait)
        waiting.add_done_callback(self._waited)

    def _waited(self, waiting: asyncio.Future[int]) -> None:
        if not waiting.cancelled() and (exc := waiting.exception()) is not None:
            log.warning("waiting for a local process failed", pid=self.proc.pid, error=repr(exc))
        self._resolve()

    def _resolve(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def close(self) -> None:
        """Stop watching. A process still not reaped (it outlived the wait after SIGKILL, or the
        run was torn down before that wait ended) is left to a thread that reaps it when it exits."""
        if self._pidfd < 0:  # reaped already, or a thread is waiting for it
            return
        self._stop_reader()
        if self.proc.poll() is None:
            name = f"jobwire-reap-{self.proc.pid}"
            threading.Thread(target=self.proc.wait, name=name, daemon=True).start()


async def _terminate(exit_watch: _ExitWatch, pgid: int, grace: float) -> None:
    """SIGTERM the group; wait until it is empty (or `grace` passed); SIGKILL what is left."""
    _signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    try:
        # No event tells when a process group becomes empty: poll it. (The leader is reaped by
        # the exit watch as soon as it exits, so it does not linger as a member.)
        while loop.time() < deadline and await asyncio.to_thread(_group_alive, pgid):  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
    finally:
        _signal_group(pgid, signal.SIGKILL)
    try:
        await asyncio.wait_for(asyncio.shield(exit_watch.exited), timeout=max(grace, 5.0))
    except TimeoutError:
        log.warning("process did not exit after SIGKILL", pgid=pgid)
