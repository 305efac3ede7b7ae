"""The launch journal: which attempts were handed to their target, as known after a crash.

Before an attempt is handed to its target, a line `+<target name>` is appended to
`<data_dir>/launches.journal`; once the run's end is committed, a line `-<target name>`. After a
crash, a pending run whose attempt is in the journal *may* have started, so it is resumed (the
target adopts it by name, or reports it lost); one that is not certainly did not start and is
simply launched. That keeps "never lost, never doubled" for local processes too, which have no
server-side name to look up.

Why a journal and not a file per attempt (the first design): creating and unlinking a file per run
cost ~0.4 ms of the event loop each on ext4 — 40 % of the engine's time at 1,000 runs a second.
An append to an open file is a few microseconds.

Why no fsync: the line must survive a crash of jobwire (it is in the page cache as soon as
`write` returns), not of the machine. A machine that loses power loses the local processes it was
running too, so relaunching one whose line did not reach the disk repeats nothing that finished;
Kubernetes Jobs and HTTP calls are deduplicated by name on the target side whatever the journal says.

Targets whose `launch_marker` is False (`http`: a pending run is called again with the same
`Idempotency-Key` whether or not its call went out) get no line at all: a write per attempt and
one per end, ~3 % of the event loop per HTTP run, that would change nothing after a crash.

The file is compacted (rewritten with just the live lines, then renamed over) when it is opened and
whenever dead lines outnumber live ones by `COMPACT_FACTOR` and `COMPACT_MIN`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from jobwire.store import StoreLocked

COMPACT_MIN = 10_000
"""Dead lines before a compaction is considered: a rewrite costs O(live), so not on every end."""

COMPACT_FACTOR = 4
"""…and only when dead lines outnumber live ones this many times over."""


def _lock(path: Path) -> int:
    """An exclusive non-blocking flock on `path`, with this pid in it; StoreLocked if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StoreLocked(
            f"another jobwire (pid {holder or 'unknown'}) uses the data folder {path.parent}: each "
            "jobwire needs a JOBWIRE_DATA_DIR of its own (replicas on one PostgreSQL database too)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class LaunchJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.live: set[str] = set()
        """The names of attempts handed over and not forgotten (read-only outside this class; one
        set for the journal's life, so a caller may hold it)."""
        self._dead = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Load what the last process left, adopt old per-attempt marker files, and compact.
        Takes `<journal>.lock` for as long as it is open: replicas on one PostgreSQL database
        each need a data folder of their own (StoreLocked names the process that holds it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        live: set[str] = set()
        if self.path.exists():
            with self.path.open("rb") as fh:
                for raw in fh:
                    line = raw.rstrip(b"\n").decode("utf-8", "replace")
                    if line.startswith("+"):
                        live.add(line[1:])
                    elif line.startswith("-"):
                        live.discard(line[1:])
                    # A last line cut short (a power loss: `_append` leaves none) is taken as it
                    # reads: `+name` may have been handed over, so it stays live (resumed, never
                    # doubled); a cut-off name is one no attempt has. Anything else (zeros) is
                    # ignored. `_rewrite` below ends every line before anything is appended.
        legacy = self.path.parent / "launched"  # one empty file per attempt (before the journal)
        if legacy.is_dir():
            live.update(p.name for p in legacy.iterdir())
        self.live.clear()
        self.live.update(live)
        self._rewrite()
        if legacy.is_dir():
            shutil.rmtree(legacy, ignore_errors=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __contains__(self, name: object) -> bool:
        return name in self.live

    def __len__(self) -> int:
        return len(self.live)

    def mark(self, name: str) -> None:
        """Note that attempt `name` is about to be handed to its target."""
        if name in self.live:
            return
        self._append(f"+{name}\n")
        self.live.add(name)

    def forget(self, names: Iterable[str]) -> None:
        """The run's end is committed: its attempts need no resuming any more."""
        lines = [f"-{n}\n" for n in names if n in self.live]
        if not lines:
            return
        self._append("".join(lines))
        for line in lines:
            self.live.discard(line[1:-1])
        self._dead += len(lines)
        if self._dead >= COMPACT_MIN and self._dead >= COMPACT_FACTOR * len(self.live):
            self._rewrite()

    def _append(self, text: str) -> None:
        fd = self._fd
        if fd is None:
            raise RuntimeError(f"launch journal {self.path} is not open")
        data = text.encode()
        done = os.write(fd, data)
        if done == len(data):
            return
        # A short write (disk full): write the rest, or take the torn part back out and fail. Left in
        # place, it would swallow the next append (`+a` then `+b\n` reads back as the one name `a+b`):
        # attempts handed over would be missing after a crash, and launched again.
        try:
            while done < len(data):
                n = os.write(fd, data[done:])
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
                done += n
        except BaseException:
            os.ftruncate(fd, os.fstat(fd).st_size - done)
            raise

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write("".join(f"+{n}\n" for n in sorted(self.live)).encode())
        os.replace(tmp, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._dead = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
