"""How a plug kind describes itself to the registry (`jobwire/registry.py`), and how a plug whose
client library is not installed says so. A leaf module: a plug's `spec` module imports it while
`jobwire.model` is still being built.

`pip install jobwire` is the core (SQLite, the local and HTTP targets, the API, the dashboard);
each integration's client library comes with a pip extra (`EXTRAS`, the same as pyproject's
`[project.optional-dependencies]`; `tests/packaging/test_extras.py` keeps the two equal).
A plug is only imported when it is used, and a missing library is then one `PlugMissing` naming
the `pip install 'jobwire[<extra>]'` to run.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EXTRAS: dict[str, tuple[str, ...]] = {
    "kubernetes": ("lightkube", "msgspec"),
    "amqp": ("aio_pika",),
    "mqtt": ("aiomqtt",),
    "postgres": ("asyncpg",),
    "aws": ("aiobotocore",),
}
"""Each pip extra → the top-level modules of the client libraries it brings."""


class PlugMissing(RuntimeError):
    """A plug's client library is not installed; the message names the pip extra."""


def missing_text(what: str, module: str, extra: str) -> str:
    """`the kubernetes target needs the Python package 'lightkube': pip install 'jobwire[kubernetes]'`."""
    return f"{what} needs the Python package {module!r}: pip install 'jobwire[{extra}]'"


def missing_module(extra: str) -> str | None:
    """The first client library of `extra` that is not installed (found without importing it), or None."""
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def extra_problem(what: str, extra: str) -> str | None:
    """Why `what` (a plug: "the amqp source") cannot run here — its extra is not installed — or None."""
    module = missing_module(extra)
    return missing_text(what, module, extra) if module is not None else None


def load(where: str, what: str, extra: str) -> Any:
    """`module:attribute`, imported now; PlugMissing naming `extra` when a library it needs is not
    installed (a missing jobwire module is a bug, raised as it is)."""
    module, _, attribute = where.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != "jobwire":
            # name the extra's own library (lightkube), not the first of its dependencies imported
            raise PlugMissing(missing_text(what, missing_module(extra) or exc.name, extra)) from None
        raise
    return getattr(mod, attribute)


@dataclass(frozen=True, slots=True)
class SourcePlug:
    """A source kind: the trigger type it adds to job definitions, its settings section, and where
    its client code is (imported only when a source of this kind is configured)."""

    kind: str
    trigger: type[Any] | None
    """The trigger model (`type: <kind>` in a job's `triggers`), or None."""
    settings: type[Any] | None
    """Its settings section: a pydantic-settings class that reads its own variables, or None."""
    load: str
    """`module:function` of `build(bindings, settings) -> list[Source]`."""
    extra: str
    """The pip extra that brings its client library: `pip install 'jobwire[<extra>]'`."""
    global_bindings: Callable[[Any], list[Any]] | None = None
    """Bindings that come from settings alone (e.g. seed 000's shared queue when `BROKER_URL` is set)."""
    sink: str | None = None
    """`module:function` of `build_sink(settings) -> Sink | None`: the status sink this kind
    brings when its settings turn it on (RabbitMQ's status publisher), imported only then."""
    sink_wanted: Callable[[Any], bool] | None = None
    """Whether the kind's settings turn its status sink on, answered before `sink` is imported
    (so an install without the extra says nothing about a sink nobody asked for); None: ask `sink`."""

    def builder(self) -> Callable[..., Any]:
        """The kind's `build` function; PlugMissing (naming the extra) when its library is absent."""
        return self._import(self.load)

    def sink_builder(self) -> Callable[..., Any] | None:
        return self._import(self.sink) if self.sink else None

    def problem(self) -> str | None:
        """Why this kind cannot run here (its extra is not installed), or None."""
        return extra_problem(f"the {self.kind} source", self.extra)

    def _import(self, where: str) -> Callable[..., Any]:
        fn: Callable[..., Any] = load(where, f"the {self.kind} source", self.extra)
        return fn
