"""Event sources in the engine: which to run (from the jobs' triggers and each kind's settings),
each one supervised, and the intake they hand their events to.

Every source kind in `jobwire/registry.py` contributes bindings — one per trigger of its type in a
job definition, plus any that its settings make on their own (seed 000's shared queue when
`BROKER_URL` is set) — and its `build` turns them into sources (one per connection). Each source
runs as a supervised task `jobwire-source-<name>`: when it raises (a lost connection), the failure
is logged, shown in `/readyz`, and `run` is called again with exponential backoff. When job
definitions change, the sources are rebuilt and only those whose bindings changed are restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from jobwire.engine.errors import Unavailable
from jobwire.engine.supervisor import Supervisor
from jobwire.model import Admission, Incoming, Job
from jobwire.plug import PlugMissing, SourcePlug
from jobwire.registry import SOURCES
from jobwire.sources.base import Binding, IntakeUnavailable, Source
from jobwire.store import StoredJob

log = structlog.get_logger(__name__)

SubmitMany = Callable[[list[Incoming]], Coroutine[Any, Any, list[Admission | BaseException]]]


Prepare = Callable[[Sequence[Incoming]], Coroutine[Any, Any, list[Incoming]]]


class EngineIntake:
    """The `Intake` a source gets: `submit` returns after everything it was given is committed.
    `prepare` may rewrite the events first (template jobs: `engine/templates.py`)."""

    def __init__(self, submit_many: SubmitMany, prepare: Prepare | None = None) -> None:
        self._submit_many = submit_many
        self._prepare = prepare

    async def submit(self, events: Sequence[Incoming]) -> list[Admission]:
        if not events:
            return []
        try:
            if self._prepare is not None:
                events = await self._prepare(events)
        except ConnectionError as exc:
            raise IntakeUnavailable(str(exc)) from exc
        try:
            results = await self._submit_many(list(events))
        except Unavailable as exc:
            raise IntakeUnavailable(str(exc)) from exc
        out: list[Admission] = []
        for r in results:
            if isinstance(r, BaseException):
                raise IntakeUnavailable(f"could not record the event: {r}") from r
            out.append(r)
        return out


def bindings_by_kind(
    plugs: Sequence[SourcePlug], jobs: Iterable[StoredJob], settings: Mapping[str, Any]
) -> dict[str, list[Binding]]:
    """Per source kind: one binding per trigger of that type in a job definition, plus those its
    settings make on their own. One pass over the jobs for every kind (a pass per kind over
    100,000 jobs was 1.2 s of every start, and of every rebuild after a job changed)."""
    out: dict[str, list[Binding]] = {p.kind: [] for p in plugs}
    for stored in jobs:
        job = stored.job
        if not any(t.type in out for t in job.triggers):
            continue
        for tid, trigger in zip(job.trigger_ids(), job.triggers, strict=True):
            if (bound := out.get(trigger.type)) is not None:
                bound.append(Binding(job.name, tid, trigger))
    for plug in plugs:
        if plug.global_bindings is not None:
            out[plug.kind] += plug.global_bindings(settings.get(plug.kind))
    return out


class SourceManager:
    def __init__(
        self,
        jobs: Mapping[str, StoredJob],
        supervisor: Supervisor,
        submit_many: SubmitMany,
        plugs: Sequence[SourcePlug] = SOURCES,
        prepare: Prepare | None = None,
    ) -> None:
        self._jobs = jobs
        self._supervisor = supervisor
        self.intake = EngineIntake(submit_many, prepare)
        self._plugs = plugs
        self._kinds = frozenset(p.kind for p in plugs)
        self._settings: dict[str, Any] = {}
        self.sources: dict[str, Source] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.problems: dict[str, str] = {}
        """Per source kind: why it cannot run (its client library is missing, its build failed)."""
        self._pending: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        self._settings = {p.kind: p.settings() for p in self._plugs if p.settings is not None}
        await self.reconcile()

    def binds(self, job: Job | None) -> bool:
        """Whether `job` has a trigger one of the source kinds serves: a change to a job without
        one (before and after) leaves every source as it is."""
        return job is not None and any(t.type in self._kinds for t in job.triggers)

    def changed(self) -> None:
        """Job definitions changed: rebuild the sources soon (coalesced)."""
        if self._pending is not None and not self._pending.done():
            self._again = True
            return
        self._pending = self._supervisor.once(self._reconcile_until_settled(), "jobwire-sources-reload")

    async def _reconcile_until_settled(self) -> None:
        while True:
            self._again = False
            await self.reconcile()
            if not self._again:
                return

    async def reconcile(self) -> None:
        wanted: dict[str, Source] = {}
        by_kind = bindings_by_kind(self._plugs, self._jobs.values(), self._settings)
        for plug in self._plugs:
            settings = self._settings.get(plug.kind)
            bindings = by_kind[plug.kind]
            if not bindings:
                self.problems.pop(plug.kind, None)
                continue
            try:
                built: list[Source] = plug.builder()(bindings, settings)
            except PlugMissing as exc:
                self._problem(plug.kind, str(exc))
                continue
            except Exception as exc:
                self._problem(plug.kind, f"cannot build the {plug.kind} sources: {exc}")
                continue
            self.problems.pop(plug.kind, None)
            for source in built:
                wanted[source.name] = source
        for name in list(self.sources):
            old = self.sources[name]
            new = wanted.get(name)
            if new is not None and new.identity == old.identity:
                wanted[name] = old  # unchanged: keep it running
                continue
            await self._stop(name)
        for name, source in wanted.items():
            if name not in self.sources:
                self._start(source)

    def _problem(self, kind: str, message: str) -> None:
        if self.problems.get(kind) != message:
            log.error("source kind cannot run", kind=kind, error=message)
        self.problems[kind] = message

    def _start(self, source: Source) -> None:
        self.sources[source.name] = source

        def run() -> Coroutine[Any, Any, None]:
            return source.run(self.intake)

        self._tasks[source.name] = self._supervisor.loop(f"jobwire-source-{source.name}", run, critical=False)
        log.info("source started", source=source.name, kind=source.kind, bindings=len(source.bindings))

    async def _stop(self, name: str) -> None:
        self.sources.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        for name in list(self.sources):
            await self._stop(name)

    def health(self) -> list[dict[str, Any]]:
        out = [
            {"source": name, "kind": s.kind, **s.health.as_dict()} for name, s in sorted(self.sources.items())
        ]
        for kind, why in self.problems.items():
            out.append({"source": kind, "kind": kind, "connected": False, "last_error": why})
        return out


class SourceCollector(Collector):
    """`jobwire_source_connected`, `_messages_total`, `_dead_lettered_total`, `_lag` per source,
    read from the sources' health at scrape time (labels: the source's kind and name)."""

    def __init__(self, manager: SourceManager) -> None:
        self._manager = manager

    def collect(self) -> Iterable[Any]:
        labels = ["kind", "source"]
        connected = GaugeMetricFamily("jobwire_source_connected", "1 while connected", labels=labels)
        messages = CounterMetricFamily("jobwire_source_messages", "Messages received", labels=labels)
        dead = CounterMetricFamily("jobwire_source_dead_lettered", "Messages dead-lettered", labels=labels)
        lag = GaugeMetricFamily("jobwire_source_lag", "Messages waiting at the broker", labels=labels)
        for name, s in self._manager.sources.items():
            values = [s.kind, name]
            connected.add_metric(values, 1.0 if s.health.connected else 0.0)
            messages.add_metric(values, float(s.health.messages))
            dead.add_metric(values, float(s.health.dead_lettered))
            if s.health.lag is not None:
                lag.add_metric(values, float(s.health.lag))
        return [connected, messages, dead, lag]
