"""The plugs an engine runs with, built from its settings: the store, one instance of every
target kind, the sinks of `settings.sinks` (none of them started: the engine starts them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from jobwire.config import Settings
from jobwire.model import Job
from jobwire.plug import PlugMissing
from jobwire.registry import SOURCES
from jobwire.sinks import build_sinks
from jobwire.sinks.base import RunLogReader, Sink
from jobwire.store import Store, open_store
from jobwire.targets import build_targets
from jobwire.targets.base import Target

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Plugs:
    store: Store
    targets: dict[str, Target]
    sinks: list[Sink]


def build_plugs(settings: Settings, store: Store | None = None) -> Plugs:
    """The store (`store` if given, else the one `settings` names), the targets and the sinks."""
    store = store or open_store(
        settings.effective_database_url,
        pool_size=settings.db_pool_size,
        auto_migrate=settings.db_auto_migrate,
    )
    targets = build_targets(settings)
    return Plugs(store, targets, build_sinks(settings) + plug_sinks())


def plug_sinks() -> list[Sink]:
    """The status sinks that source kinds bring when their settings turn them on (RabbitMQ's)."""
    out: list[Sink] = []
    for plug in SOURCES:
        if plug.sink is None or plug.settings is None:
            continue
        settings = plug.settings()
        if plug.sink_wanted is not None and not plug.sink_wanted(settings):
            continue
        try:
            builder = plug.sink_builder()
        except PlugMissing as exc:
            log.error("status sink cannot run", kind=plug.kind, error=str(exc))
            continue
        sink = builder(settings) if builder is not None else None
        if sink is not None:
            out.append(sink)
    return out


def bind_targets(
    targets: Iterable[Target],
    run_exists: Callable[[str], Awaitable[bool]],
    jobs: Callable[[], Iterable[Job]],
    registry: CollectorRegistry,
) -> None:
    """What every target is offered before `start` (see `Target.bind`)."""
    for target in targets:
        target.bind(run_exists=run_exists, jobs=jobs, registry=registry)


def bind_sinks(sinks: Iterable[Sink], run_log: RunLogReader) -> None:
    """What every sink is offered before `start` (see `Sink.bind`): the runs' log reader."""
    for sink in sinks:
        sink.bind(run_log=run_log)


__all__ = ["Plugs", "bind_sinks", "bind_targets", "build_plugs"]
