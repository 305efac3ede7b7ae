"""Captured run logs: one file per run under `<data_dir>/logs`, capped in size, followable."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path

TRUNCATED = b"\n[jobwire: log truncated at %d bytes]\n"


class RunLog:
    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.size = path.stat().st_size if path.exists() else 0
        self._fh: int | None = None
        self.truncated = False

    def write(self, data: bytes) -> None:
        if self.truncated or not data:
            return
        if self._fh is None:
            self._fh = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        room = self.cap - self.size
        if len(data) > room:
            data = data[: max(room, 0)] + TRUNCATED % self.cap
            self.truncated = True
        os.write(self._fh, data)
        self.size += len(data)

    def close(self) -> None:
        if self._fh is not None:
            os.close(self._fh)
            self._fh = None


class RunLogs:
    def __init__(self, folder: Path, default_cap: int) -> None:
        self.folder = folder
        self.default_cap = default_cap
        folder.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, RunLog] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def path(self, run_id: str) -> Path:
        return self.folder / f"{run_id}.log"

    def write(self, run_id: str, data: bytes, cap: int | None = None) -> None:
        log = self._open.get(run_id)
        if log is None:
            log = self._open[run_id] = RunLog(self.path(run_id), cap or self.default_cap)
        log.write(data)
        ev = self._changed.get(run_id)
        if ev is not None:
            ev.set()

    def finish(self, run_id: str) -> None:
        log = self._open.pop(run_id, None)
        if log is not None:
            log.close()
        ev = self._changed.get(run_id)
        if ev is not None:
            ev.set()

    def delete(self, run_id: str) -> None:
        self.finish(run_id)
        self.path(run_id).unlink(missing_ok=True)

    async def read(self, run_id: str, follow: bool, is_active: Callable[[], bool]) -> AsyncIterator[bytes]:
        """The log so far; with `follow`, also what is written until the run ends."""
        path = self.path(run_id)
        pos = 0
        while True:
            ev = self._changed.setdefault(run_id, asyncio.Event())
            ev.clear()
            ended = not follow or not is_active()
            if path.exists():
                with path.open("rb") as fh:
                    fh.seek(pos)
                    while chunk := fh.read(65536):
                        pos += len(chunk)
                        yield chunk
            if ended:
                return
            # woken by the next write or the end of the run; the timeout only guards a missed wake-up
            with suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await ev.wait()
