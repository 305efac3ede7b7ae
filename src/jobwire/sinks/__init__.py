"""Sinks: where status documents go. `SINKS` maps a `sinks[].type` setting to its implementation."""

from __future__ import annotations

from jobwire.config import LogSinkSpec, Settings, SinkSpec, WebhookSinkSpec
from jobwire.sinks.base import Sink
from jobwire.sinks.log import LogSink
from jobwire.sinks.webhook import DeliveryError, SinkConfigError, WebhookSink

SINKS: dict[str, type[Sink]] = {"webhook": WebhookSink, "log": LogSink}


def build_sink(spec: SinkSpec) -> Sink:
    if isinstance(spec, WebhookSinkSpec):
        return WebhookSink(spec)
    if isinstance(spec, LogSinkSpec):
        return LogSink(spec)
    raise SinkConfigError(f"unknown sink type {getattr(spec, 'type', spec)!r}")  # pragma: no cover


def build_sinks(settings: Settings) -> list[Sink]:
    """One sink per `settings.sinks` entry, in order (not started: the engine calls `start`)."""
    return [build_sink(spec) for spec in settings.sinks]


__all__ = [
    "SINKS",
    "DeliveryError",
    "LogSink",
    "Sink",
    "SinkConfigError",
    "WebhookSink",
    "build_sink",
    "build_sinks",
]
