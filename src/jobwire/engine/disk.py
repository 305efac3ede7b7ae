"""Disk problems in the data folder (`JOBWIRE_DATA_DIR`), said in one line: what, where, what to do.

`jobwire serve` prints these instead of a traceback when the folder cannot be created or written at
start (read-only, a file where a folder should be, no permission, a full disk), and when a stop
could not save the last state changes (a full disk): the next start reconciles those runs from what
was saved and the launch journal, like after a crash.
"""

from __future__ import annotations

import errno
from pathlib import Path

SETTING = "JOBWIRE_DATA_DIR"


class StopIncomplete(RuntimeError):
    """The engine stopped, but could not save everything; the message says what and what to do."""


def data_dir_problem(exc: OSError, data_dir: Path) -> str:
    """One line for an OS error met while preparing or writing `data_dir`."""
    where = exc.filename if exc.filename else data_dir
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk holding {data_dir} ({SETTING}) is full ({where}: {reason}): "
            "free space there and start jobwire again"
        )
    if code == errno.EROFS:
        return (
            f"{where} is on a read-only file system: set {SETTING} to a writable folder "
            f"(now {data_dir}) or remount it read-write"
        )
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write {where}: make {data_dir} writable by this user, or change {SETTING}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return (
            f"{where}: a file is where a folder should be: move it away, or set {SETTING} "
            f"(now {data_dir}) to a folder"
        )
    return f"cannot use {where} in {SETTING} ({data_dir}): {reason}"


def unsaved_at_stop(events: int, runs: int, error: str, data_dir: Path) -> str:
    counts = ((events, "event"), (runs, "run state"))
    parts = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in counts if n]
    lost = " and ".join(parts) or "the last changes"
    return (
        f"jobwire stopped, but {lost} could not be saved ({error}); "
        "the next start reconciles those runs from what was saved: "
        f"free space in {data_dir} ({SETTING}) first"
    )
