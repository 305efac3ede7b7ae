"""Sinks: where status documents go. `SINKS` maps a `sinks[].type` setting to its implementation."""

from __future__ import annotations

from typing import Any

from jobwire.config import LogSinkSpec, MqttSinkSpec, S3LogSinkSpec, Settings, SinkSpec, WebhookSinkSpec
from jobwire.sinks.base import Sink
from jobwire.sinks.log import LogSink
from jobwire.sinks.mqtt import MqttSink
from jobwire.sinks.s3log import S3LogSink
from jobwire.sinks.webhook import DeliveryError, SinkConfigError, WebhookSink

SINKS: dict[str, type[Sink]] = {
    "webhook": WebhookSink, "log": LogSink, "mqtt": MqttSink, "s3log": S3LogSink
}


def build_sink(spec: SinkSpec) -> Sink:
    if isinstance(spec, WebhookSinkSpec):
        return WebhookSink(spec)
    if isinstance(spec, LogSinkSpec):
        return LogSink(spec)
    if isinstance(spec, MqttSinkSpec):
        return MqttSink(spec, url=getattr(_mqtt_settings(), "url", None))
    if isinstance(spec, S3LogSinkSpec):
        return S3LogSink(spec)
    raise SinkConfigError(f"unknown sink type {getattr(spec, 'type', spec)!r}")  # pragma: no cover


def build_sinks(settings: Settings) -> list[Sink]:
    """One sink per `settings.sinks` entry, in order (not started: the engine calls `start`)."""
    sinks = [build_sink(spec) for spec in settings.sinks]
    mqtt = _mqtt_settings()
    if mqtt is not None and mqtt.sink_enabled and not any(isinstance(s, MqttSink) for s in sinks):
        spec = MqttSinkSpec(
            url=mqtt.url, prefix=mqtt.status_prefix, retain=mqtt.retain, protocol=mqtt.protocol
        )
        sinks.append(MqttSink(spec))
    return sinks


def _mqtt_settings() -> Any:
    """The mqtt source kind's settings section (`JOBWIRE_MQTT_*`): its `sink` setting turns the
    mqtt sink on without a `sinks` entry (see `jobwire.sources.mqtt.spec.MqttSettings`)."""
    from jobwire.registry import source_plug

    plug = source_plug("mqtt")
    return plug.settings() if plug is not None and plug.settings is not None else None


__all__ = [
    "SINKS",
    "DeliveryError",
    "LogSink",
    "MqttSink",
    "S3LogSink",
    "Sink",
    "SinkConfigError",
    "WebhookSink",
    "build_sink",
    "build_sinks",
]
