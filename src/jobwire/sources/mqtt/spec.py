"""The `mqtt` trigger and the `[mqtt]` settings section — pure pydantic, no client library.

A job's `mqtt` trigger subscribes to a topic filter (`+` and `#` allowed) on the broker of
`JOBWIRE_MQTT_URL` (default `mqtt://127.0.0.1:1883`) or its own `url`; each message is one event.
Seed 004's listener in jobwire's terms: the trigger's topic is the CSV's `mqtt_topic`, and a
chained job subscribes to `services/mqtt_job_listener/job_complete/<job>`, which the `mqtt` status
sink publishes.

**Event key** (what makes a redelivered message a `duplicate` instead of a second run):

* `event_key: <name>` — an MQTT 5 user property of that name, else a field of that name in the
  JSON body (an object). A message that has neither falls back to the hash below.
* otherwise: a hash of the topic and the payload, plus the `dedupe_window` bucket the message
  arrived in (`floor(arrival time / window)`). MQTT has no message id that survives a
  redelivery (the packet id is per connection), so the content is the only identity there is.
  Consequences, chosen on purpose: the same payload on the same topic twice within one bucket is
  one run (seed 004's completion delivered three times launches the next job once); a redelivery
  that arrives in a later bucket (jobwire down across the bucket's end between the commit and the
  PUBACK) is a second run; the same payload sent again in a later bucket is a new run. Send an
  id (`event_key`) when that is not good enough.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobwire.model import Duration, _Trigger
from jobwire.plug import SourcePlug

DEFAULT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_STATUS_PREFIX = "services/mqtt_job_listener"
"""Seed 004's prefix: completions on `services/mqtt_job_listener/job_complete/<job>`."""
MAX_TOPIC_BYTES = 65_535


def mqtt_url(url: str) -> str:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://…` (TLS; port default 8883)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected an mqtt:// or mqtts:// URL, got {scheme!r}://…")
    host = rest.rpartition("@")[2].split("/", 1)[0]
    if not host:
        raise ValueError("the MQTT URL names no host")
    return url


def topic_filter(value: str) -> str:
    """A valid MQTT topic filter: `+` a whole level, `#` a whole and last level, no NUL, not
    empty, at most 65,535 bytes in UTF-8."""
    if not value:
        raise ValueError("a topic filter cannot be empty")
    if "\x00" in value:
        raise ValueError("a topic filter cannot contain NUL")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ValueError(f"a topic filter is at most {MAX_TOPIC_BYTES} bytes")
    levels = value.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole level and the last one, got {value!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level, got {value!r}")
    return value


def topic_name(value: str) -> str:
    """A topic to publish to: a topic filter without wildcards."""
    topic_filter(value)
    if "+" in value or "#" in value:
        raise ValueError(f"a topic to publish to cannot contain '+' or '#', got {value!r}")
    return value


class MqttTrigger(_Trigger):
    """Run the job for each message on an MQTT topic filter (seed 004's `mqtt_topic`)."""

    type: Literal["mqtt"] = "mqtt"
    url: str | None = Field(default=None, repr=False)
    """Broker URL; default `JOBWIRE_MQTT_URL`, else `mqtt://127.0.0.1:1883`."""
    topic: str
    """Topic filter to subscribe to; `+` matches one level, `#` the rest."""
    qos: Literal[0, 1, 2] = 1
    """Subscription QoS. 1 (the default) is the one whose acknowledgement jobwire holds back
    until the event is committed: see the README's MQTT section."""
    payload: Literal["json", "raw"] = "json"
    """`json`: the body is a JSON document whose fields fill the job's parameters (not JSON: the
    event is invalid and the message dead-lettered). `raw`: the body (UTF-8 text) is the
    parameter `payload`."""
    event_key: str | None = Field(default=None, min_length=1, max_length=256)
    """An MQTT 5 user property, else a JSON body field, that identifies the event; default a
    hash of topic and payload within `dedupe_window` (see the module docstring)."""
    dedupe_window: Duration = timedelta(minutes=5)
    """Without an event key: the same payload on the same topic within one window is one run."""
    reliable: bool | None = None
    """Ask for at-least-once delivery with the acknowledgement after the commit. Needs `qos: 1`:
    QoS 0 has no acknowledgement, and for QoS 2 paho-mqtt acknowledges receipt (PUBREC) before
    handing the message over. Unset: whatever `qos` gives."""
    retained: bool = False
    """Also run for a retained message the broker replays when jobwire subscribes (off: only
    messages published while subscribed, or queued in the session, make runs)."""
    job_level: int | None = Field(default=None, ge=0, le=64)
    """For the shared intake (`JOBWIRE_MQTT_INTAKE_TOPIC`): the topic level (0-based) that names
    the job, e.g. 1 for `jobs/+/run`; without it, the JSON body's `job` field names it."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else mqtt_url(v)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        return topic_filter(v)

    @field_validator("dedupe_window")
    @classmethod
    def _window(cls, v: timedelta) -> timedelta:
        if v < timedelta(seconds=1):
            raise ValueError("dedupe_window must be at least 1s")
        return v

    @model_validator(mode="after")
    def _reliable(self) -> MqttTrigger:
        if self.reliable and self.qos == 0:
            raise ValueError(
                "reliable delivery needs qos 1: QoS 0 messages are never acknowledged or redelivered"
            )
        if self.reliable and self.qos == 2:
            raise ValueError(
                "reliable delivery needs qos 1: with QoS 2 the client acknowledges receipt (PUBREC) "
                "before the event is recorded"
            )
        return self


def default_client_id() -> str:
    """Stable for one jobwire installation (host name and data folder), so its persistent
    session — and the messages queued in it while jobwire was down — is found again on restart.
    At most 23 characters (the limit every MQTT 3.1.1 broker must accept)."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:10] or "host"
    data_dir = Path(os.environ.get("JOBWIRE_DATA_DIR") or ".jobwire").expanduser().resolve()
    digest = hashlib.sha256(f"{socket.gethostname()}\0{data_dir}".encode()).hexdigest()[:8]
    return f"jw-{host}-{digest}"


class MqttSettings(BaseSettings):
    """`[mqtt]` settings (`JOBWIRE_MQTT_*`)."""

    model_config = SettingsConfigDict(env_prefix="JOBWIRE_MQTT_", extra="ignore")

    url: str = Field(default=DEFAULT_URL, repr=False)
    """The broker of every `mqtt` trigger that names none, and of the status sink. User,
    password and TLS in the URL: `mqtts://user:pass@host:8883`."""
    client_id: str = Field(default_factory=default_client_id, min_length=1, max_length=128)
    """The source's client id; stable per host and data folder by default (the persistent
    session is keyed by it). Two jobwire processes must not share one: the broker disconnects
    the older. A trigger on another broker gets `<client_id>-<hash of its URL>`."""
    session_expiry: Duration = timedelta(days=7)
    """How long the broker keeps the session (subscriptions and queued messages) while jobwire
    is away (MQTT 5; with 3.1.1 the broker's own setting applies)."""
    protocol: Literal["5", "3.1.1"] = "5"
    inflight: int = Field(default=100, ge=1, le=65_535)
    """Unacknowledged messages in flight at most (MQTT 5 Receive Maximum): the bound on work not
    yet recorded. With 3.1.1 the broker's `max_inflight_messages` applies."""
    status_prefix: str = DEFAULT_STATUS_PREFIX
    """Status documents go to `<prefix>/job_complete/<job>` and `<prefix>/status/<job>`;
    dead-lettered messages to `<prefix>/dead/<original topic>`."""
    sink: bool | None = None
    """Publish status documents on the broker: on when `JOBWIRE_MQTT_URL` is set (as seed 004
    always publishes its completions), forced with true/false."""
    retain: bool = False
    """Publish status documents retained."""
    intake_topic: str | None = None
    """A shared topic filter whose messages name their job (by `intake_job_level`, else the body's
    `job` field), like RabbitMQ's shared queue: e.g. `jobwire/jobs/+/run`."""
    intake_job_level: int | None = Field(default=None, ge=0, le=64)
    """The topic level (0-based) of `intake_topic` that names the job (1 for `jobwire/+/run`)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return mqtt_url(v)

    @field_validator("status_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return topic_name(v.rstrip("/"))

    @property
    def sink_enabled(self) -> bool:
        return self.sink if self.sink is not None else "url" in self.model_fields_set


def global_bindings(settings: Any) -> list[Any]:
    """The shared intake topic, when `JOBWIRE_MQTT_INTAKE_TOPIC` is set."""
    from jobwire.sources.base import Binding

    if not isinstance(settings, MqttSettings) or not settings.intake_topic:
        return []
    trigger = MqttTrigger(topic=settings.intake_topic, job_level=settings.intake_job_level)
    return [Binding(job=None, trigger_id="mqtt", trigger=trigger)]


PLUG: SourcePlug = SourcePlug(
    kind="mqtt",
    trigger=MqttTrigger,
    settings=MqttSettings,
    load="jobwire.sources.mqtt.source:build",
    extra="mqtt",
    global_bindings=global_bindings,
)

