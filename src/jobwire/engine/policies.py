"""Pure policy logic: concurrency slots and retry backoff (unit-tested without an engine)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from jobwire.model import ConcurrencyPolicy, Job, Retry


def backoff_delay(retry: Retry, next_attempt: int, rnd: Callable[[], float] = random.random) -> float:
    """Seconds to wait before `next_attempt` (2, 3, ...): backoff × multiplier^(n-2), capped, ± jitter."""
    base = retry.backoff.total_seconds() * retry.multiplier ** max(next_attempt - 2, 0)
    base = min(base, retry.max_backoff.total_seconds())
    return max(0.0, base * (1 + retry.jitter * (2 * rnd() - 1)))


class Decision(StrEnum):
    start = "start"
    queue = "queue"
    skip = "skip"
    replace_ = "replace"


@dataclass
class _Slot:
    active: dict[str, datetime] = field(default_factory=dict)
    """Runs holding a slot (pending or running), with their creation time (oldest replaced first)."""
    waiting: deque[str] = field(default_factory=deque)


class Slots:
    """Which runs of each (job, concurrency key) hold a slot and which wait for one."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str | None], _Slot] = {}

    def _slot(self, job: str, key: str | None) -> _Slot:
        slot = self._slots.get((job, key))
        if slot is None:  # not `setdefault(…, _Slot())`: that builds a slot (a dict, a deque) every call
            slot = self._slots[(job, key)] = _Slot()
        return slot

    def decide(self, job: Job, key: str | None) -> tuple[Decision, list[str]]:
        limit = job.concurrency.limit
        slot = self._slots.get((job.name, key))
        if limit is None or slot is None or (len(slot.active) < limit and not slot.waiting):
            return Decision.start, []
        policy = job.concurrency.policy
        if policy == ConcurrencyPolicy.forbid:
            return Decision.skip, sorted(slot.active, key=slot.active.__getitem__)
        if policy == ConcurrencyPolicy.replace_:
            oldest = sorted(slot.active, key=slot.active.__getitem__)
            return Decision.replace_, oldest[: max(len(oldest) - limit + 1, 0)]
        return Decision.queue, []

    def occupy(self, job: str, key: str | None, run_id: str, created_at: datetime) -> None:
        slot = self._slots.get((job, key))  # `_slot`, written out: once a run
        if slot is None:
            slot = self._slots[(job, key)] = _Slot()
        slot.active[run_id] = created_at

    def enqueue(self, job: str, key: str | None, run_id: str) -> None:
        self._slot(job, key).waiting.append(run_id)

    def release(self, job: str, key: str | None, run_id: str) -> bool:
        """`run_id` holds no slot and waits for none now. Returns whether runs of (job, key) still
        wait for a slot (if none does, there is nothing to promote)."""
        slot = self._slots.get((job, key))
        if slot is None:
            return False
        slot.active.pop(run_id, None)
        if slot.waiting:
            try:
                slot.waiting.remove(run_id)
            except ValueError:
                pass
        if not slot.active and not slot.waiting:
            del self._slots[(job, key)]
        return bool(slot.waiting)

    def waiting(self, job: str, key: str | None) -> list[str]:
        """The queued runs of (job, key), in order."""
        slot = self._slots.get((job, key))
        return list(slot.waiting) if slot is not None else []

    def next_waiting(self, job: Job, key: str | None) -> str | None:
        """The queued run that may take a free slot now, if any (removed from the queue)."""
        slot = self._slots.get((job.name, key))
        if slot is None or not slot.waiting:
            return None
        limit = job.concurrency.limit
        if limit is not None and len(slot.active) >= limit:
            return None
        return slot.waiting.popleft()
