"""A local process starts only before a deadline, checked by the child itself (docs/replicas.md).

With several replicas, a replica may launch only while its heartbeat surely has not expired: once
it has, another replica may have taken its runs over. The engine checks that right before the
spawn, but a pause landing between that check and the vfork (SIGSTOP, a frozen VM, a starved CPU)
would let the process start after the deadline, seconds later — and run a second time beside the
replica that took the run over. Nothing in the launching process can close that window, since the
pause can land anywhere in it.

So the child checks again, after it exists: the command is executed through `/bin/sh` with a
script of builtins only (`read`, `[`, `exec`: no process of its own), which reads the kernel's
boot-time clock (`/proc/uptime`, centiseconds; the same clock as `CLOCK_BOOTTIME` here, pauses
and suspends included) and executes the command only while it is before the deadline. Otherwise it
writes `REFUSAL` and exits with `REFUSED`, and the command never runs. Cost: one exec of the shell
(~0.5 ms) per launch, only where a deadline applies (a shared store); the command's arguments are
positional parameters of the script, never part of it.
"""

from __future__ import annotations

import errno
import os
import shutil
import time

REFUSED = 125
_MESSAGE = "not started: this replica's heartbeat deadline had passed (a pause?); started once it beats again"
REFUSAL = f"jobwire: {_MESSAGE}\n".encode()
"""All a refused child writes (on its stderr, the run's output)."""
_SCRIPT = (
    'read up _ </proc/uptime && [ "${up%.*}${up#*.}" -lt "$1" ] && shift && exec "$@"; '
    f"printf '%s\\n' \"$0: {_MESSAGE}\" >&2; exit {REFUSED}"
)
_NAME = "jobwire"


def _clocks_agree() -> bool:
    """Whether `/proc/uptime` shows this process's CLOCK_BOOTTIME (not so where it is virtualised,
    e.g. lxcfs's container uptime): the fence compares the two."""
    try:
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return abs(uptime - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0 and os.access("/bin/sh", os.X_OK)


AVAILABLE = _clocks_agree()
"""Whether local processes can be fenced here; where not, they start unfenced (the engine's own
check right before the spawn still holds them while the heartbeat may have expired)."""


def fenced(argv: list[str], deadline: float, env: dict[str, str], cwd: str | None) -> list[str]:
    """`argv` behind the check: started only before `deadline` (this process's `time.monotonic()`).

    Raises FileNotFoundError / PermissionError where the command cannot be found or executed (as a
    direct spawn would; the shell would only say so on the run's output)."""
    _check_runnable(argv[0], env, cwd)
    boot = time.clock_gettime(time.CLOCK_BOOTTIME) + (deadline - time.monotonic())
    # /proc/uptime shows the clock rounded down to centiseconds: "< floor(deadline)" holds only
    # while the clock is before the deadline
    return ["/bin/sh", "-c", _SCRIPT, _NAME, str(int(boot * 100)), *argv]


def refused(returncode: int | None, output: bytes) -> bool:
    """Whether a fenced child ended without running its command."""
    return returncode == REFUSED and output == REFUSAL


def _check_runnable(command: str, env: dict[str, str], cwd: str | None) -> None:
    if "/" in command:
        path = command if cwd is None else os.path.join(cwd, command)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), command)
        return
    if shutil.which(command, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)
