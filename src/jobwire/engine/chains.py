"""Chaining: job B's `after` trigger makes a run of B when a run of job A ends.

The child's event is handed to the committer *linked* to A's final state change, so both are
written in one transaction: a crash leaves either A running (and the child to be made when it
ends) or A ended with its child recorded — never one without the other. The child's event key is
A's run id, so its run key is taken at most once whatever happens (a redelivery, a restart).

A chain that loops back on itself (A after B after A, or A after A) is refused at definition time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jobwire.model import AfterTrigger, Incoming, Job, Run, RunState
from jobwire.store import StoredJob

Edge = tuple[str, str, AfterTrigger]
"""(child job, its trigger id, the trigger)."""


class ChainIndex:
    """Parent job name → the `after` triggers waiting for it; rebuilt when definitions change."""

    def __init__(self) -> None:
        self._children: dict[str, list[Edge]] = {}

    def rebuild(self, jobs: Mapping[str, StoredJob]) -> None:
        self._children = {}
        for stored in jobs.values():
            self._add(stored.job)

    def replace(self, name: str, job: Job | None) -> None:
        """Job `name` was defined anew (`job`) or deleted (None): only its own edges change, not a
        pass over every job (100,000 jobs: 0.25 s of the loop per API change)."""
        for parent in [p for p, edges in self._children.items() if any(e[0] == name for e in edges)]:
            kept = [e for e in self._children[parent] if e[0] != name]
            if kept:
                self._children[parent] = kept
            else:
                del self._children[parent]
        if job is not None:
            self._add(job)

    def _add(self, job: Job) -> None:
        """The edges of `job`'s `after` triggers (trigger ids computed only for a job that has one)."""
        if not any(isinstance(t, AfterTrigger) for t in job.triggers):
            return
        for tid, trigger in zip(job.trigger_ids(), job.triggers, strict=True):
            if isinstance(trigger, AfterTrigger):
                self._children.setdefault(trigger.job, []).append((job.name, tid, trigger))

    def events_after(self, parent: Run) -> list[Incoming]:
        """The events a run's end makes: one per `after` trigger on its job whose `on` matches."""
        edges = self._children.get(parent.job)
        if not edges:
            return []
        ok = parent.state == RunState.succeeded
        out = []
        for child, tid, trigger in edges:
            if (trigger.on == "succeeded" and not ok) or (trigger.on == "failed" and ok):
                continue
            out.append(
                Incoming(
                    job=child,
                    trigger=tid,
                    source="after",
                    payload=payload(parent),
                    event_key=parent.id,
                    input_location=parent.input_location,
                    environment=parent.environment,
                )
            )
        return out


def payload(parent: Run) -> dict[str, Any]:
    """What a child's parameters are filled from (it takes the ones it declares): the parent's run
    id, job and end state, its parameters, and the `data` of its callback if it called back."""
    called_back = parent.target_status.get("callback") or {}
    data = called_back.get("data") if isinstance(called_back, dict) else None
    return {
        **parent.params,
        **(data if isinstance(data, dict) else {}),
        "parent_run_id": parent.id,
        "parent_job": parent.job,
        "parent_state": parent.state.value,
    }


def find_cycle(jobs: Iterable[Job]) -> list[str] | None:
    """A chain of `after` triggers that comes back to where it started, as job names
    (`["a", "b", "a"]`), or None."""
    parents: dict[str, list[str]] = {}
    for job in jobs:
        parents[job.name] = [t.job for t in job.triggers if isinstance(t, AfterTrigger)]
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for parent in parents.get(name, []):
            if state.get(parent) == 1:
                return [*path[path.index(parent) :], parent] if parent in path else [name, parent]
            if parent in parents and state.get(parent) is None:
                found = visit(parent, [*path, parent])
                if found:
                    return found
        state[name] = 2
        return None

    for name in parents:
        if state.get(name) is None:
            found = visit(name, [name])
            if found:
                return list(reversed(found))
    return None


__all__ = ["ChainIndex", "find_cycle", "payload"]
