"""How a plug kind describes itself to the registry (`jobwire/registry.py`). A leaf module: a
plug's `spec` module imports it while `jobwire.model` is still being built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class PlugMissing(RuntimeError):
    """A plug's client library is not installed; the message names the pip extra."""


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

    def builder(self) -> Callable[..., Any]:
        """The kind's `build` function; PlugMissing (naming the extra) when its library is absent."""
        return self._import(self.load)

    def sink_builder(self) -> Callable[..., Any] | None:
        return self._import(self.sink) if self.sink else None

    def _import(self, where: str) -> Callable[..., Any]:
        import importlib

        module, _, func = where.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("jobwire"):
                raise PlugMissing(
                    f"the {self.kind} source needs the Python package {exc.name!r}: "
                    f"pip install 'jobwire[{self.extra}]'"
                ) from None
            raise
        fn: Callable[..., Any] = getattr(mod, func)
        return fn
