"""Runs recorded ahead of their due time (`scheduler.py`, `JOBWIRE_RECORD_AHEAD`), waiting for it.

They wait in groups by due time, one timer per group — 1,000 jobs due at one second are one timer,
not 1,000 — and the group is handed to its starter (`Attempts._start_due`) at once, never before its
due time: the loop's timers are in whole milliseconds and may run a callback up to one early, and
a wait of T ends up to T/1000 late on an idle loop (`scheduler.wait_ahead`), so the timer is set a
little ahead and, if it came early, set again for the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from jobwire.engine.scheduler import wait_ahead
from jobwire.model import Job, Run

Member = tuple[Run, Job]
Starter = Callable[[float, list[Member]], None]
"""Called at the due time (a Unix time) with the runs due then, in the order they were added."""


class DueGroups:
    def __init__(self, start: Starter) -> None:
        self._start = start
        self._groups: dict[float, dict[str, Member]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}
        self._due_of: dict[str, float] = {}
        """Each waiting run's due time (Unix)."""

    def __len__(self) -> int:
        return len(self._due_of)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._due_of

    def add(self, run: Run, job: Job, due: float) -> None:
        """Let `run` wait for `due` (a Unix time in the future)."""
        group = self._groups.get(due)
        if group is None:
            group = self._groups[due] = {}
            self._arm(due)
        group[run.id] = (run, job)
        self._due_of[run.id] = due

    def remove(self, run_id: str) -> Member | None:
        """Take a waiting run out (cancelled); None if it is not waiting here."""
        due = self._due_of.pop(run_id, None)
        if due is None:
            return None
        group = self._groups.get(due, {})
        member = group.pop(run_id, None)
        if not group:
            self._drop(due)
        return member

    def clear(self) -> list[Member]:
        """Stop every timer (shutdown): the runs stay pending in the store, the next start starts them."""
        for timer in self._timers.values():
            timer.cancel()
        members = [m for group in self._groups.values() for m in group.values()]
        self._groups.clear()
        self._timers.clear()
        self._due_of.clear()
        return members

    def _drop(self, due: float) -> None:
        self._groups.pop(due, None)
        timer = self._timers.pop(due, None)
        if timer is not None:
            timer.cancel()

    def _arm(self, due: float) -> None:
        delay = due - time.time()
        loop = asyncio.get_running_loop()
        self._timers[due] = loop.call_later(max(0.0, wait_ahead(delay)), self._ring, due)

    def _ring(self, due: float) -> None:
        self._timers.pop(due, None)
        if time.time() < due:  # woken ahead (on purpose, or by the timers' ms rounding): never early
            self._arm(due)
            return
        group = self._groups.pop(due, {})
        for run_id in group:
            self._due_of.pop(run_id, None)
        if group:
            self._start(due, list(group.values()))


__all__ = ["DueGroups", "Member"]
