"""The `mqtt` sink: every status document published on an MQTT broker (aiomqtt, the `mqtt` extra).

Topics, as seed 004's listener: a run's end (`succeeded`, `failed`, `timed_out`, `cancelled`,
`interrupted`) on `<prefix>/job_complete/<job>`, every other state (`queued`, `pending`,
`running`) on `<prefix>/status/<job>`; default prefix `services/mqtt_job_listener`. The message
is the status document as JSON (seed 000's shape plus `run_id`, `event_id`, `job`, `attempt`,
`time`; seed 004 names no shape). QoS 1 by default, not retained unless `retain` is set.

`publish` returns when the broker acknowledged the message (PUBACK for QoS 1, PUBCOMP for 2) and
raises otherwise (not connected, a lost connection, a timeout): the engine publishes again with
backoff, up to `max_attempts`. A document whose PUBACK was lost is published twice; a consumer
dedupes on `run_id` + `action` + `time`. The connection is opened on the first publish and again
after it is lost, with a clean session and a client id of its own per process.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from jobwire.config import MqttSinkSpec
from jobwire.model import RunState, StatusDocument
from jobwire.sinks.base import Sink
from jobwire.sinks.webhook import DeliveryError, SinkConfigError

log = structlog.get_logger(__name__)

DEFAULT_URL = "mqtt://127.0.0.1:1883"
TERMINAL = frozenset(s.value for s in RunState if s.terminal)


def status_topic(prefix: str, doc: StatusDocument) -> str:
    """`<prefix>/job_complete/<job>` for a run's end, else `<prefix>/status/<job>`."""
    kind = "job_complete" if doc.action in TERMINAL else "status"
    return f"{prefix}/{kind}/{doc.job}"


class MqttSink(Sink):
    kind = "mqtt"

    def __init__(self, spec: MqttSinkSpec, url: str | None = None) -> None:
        self.spec = spec
        self.max_attempts = spec.max_attempts
        self.url = spec.url or url or DEFAULT_URL
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise SinkConfigError(
                f"mqtt sink url must be mqtt://host[:port] or mqtts://…, got scheme {parts.scheme!r}"
            )
        self.prefix = spec.prefix.rstrip("/")
        if not self.prefix or any(c in self.prefix for c in "+#\x00"):
            raise SinkConfigError(f"mqtt sink prefix must be a topic without '+' or '#', got {spec.prefix!r}")
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.destination = f"{parts.scheme}://{self.host}:{self.port}"
        """For messages: no credentials."""
        self.client_id = f"jobwire-status-{uuid.uuid4().hex[:12]}"
        self._client: Any = None

    async def start(self) -> None:
        try:
            import aiomqtt  # noqa: F401
        except ModuleNotFoundError as exc:
            raise SinkConfigError(
                f"the mqtt sink needs the Python package {exc.name!r}: pip install 'jobwire[mqtt]'"
            ) from None

    async def close(self) -> None:
        await self._drop()

    async def _connect(self) -> Any:
        import ssl

        import aiomqtt

        if self._client is not None:
            return self._client
        v5 = self.spec.protocol == "5"
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            tls_context=ssl.create_default_context() if self.tls else None,
            timeout=10,
        )
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise DeliveryError(f"mqtt sink {self.destination}: cannot connect: {exc}") from None
        self._client = client
        log.info("mqtt sink connected", destination=self.destination)
        return client

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # aiomqtt keeps the reason of an unexpected disconnection in a future nobody awaits
            # once the connection is gone; read it, or asyncio logs "exception never retrieved".
            gone = getattr(client, "_disconnected", None)
            if gone is not None and gone.done() and not gone.cancelled():
                gone.exception()
            try:
                await client.__aexit__(None, None, None)
            except Exception as exc:  # already gone: nothing to close
                log.debug("mqtt sink close", error=str(exc))

    async def publish(self, doc: StatusDocument) -> None:
        import aiomqtt

        client = await self._connect()
        topic = status_topic(self.prefix, doc)
        try:
            body = doc.model_dump_json().encode()
            await client.publish(topic, body, qos=self.spec.qos, retain=self.spec.retain)
        except aiomqtt.MqttError as exc:
            await self._drop()
            raise DeliveryError(f"mqtt sink {self.destination}: {topic}: {exc}") from None
