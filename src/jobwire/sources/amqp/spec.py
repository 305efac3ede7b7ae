"""The `amqp` trigger and the `[amqp]` settings section — pure pydantic, no client library.

A job's trigger consumes a durable queue (declared if missing), optionally bound to an exchange
with routing keys. With `BROKER_URL` set (seed 000's variable) and nothing else said, jobwire also
consumes the shared durable queue `jobwire.events`, where each JSON message names its job in a
`job` field (or seed 000's `name`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobwire.model import _Trigger
from jobwire.plug import SourcePlug

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
QUEUE_RE = r"^[A-Za-z0-9_.:-]{1,255}$"


def _amqp_url(url: str) -> str:
    if not url.startswith(("amqp://", "amqps://")):
        raise ValueError(f"expected an amqp:// or amqps:// URL, got {url.split('://')[0]!r}://…")
    return url


class AmqpTrigger(_Trigger):
    """Run the job for each message on a RabbitMQ queue."""

    type: Literal["amqp"] = "amqp"
    url: str | None = Field(default=None, repr=False)
    """Broker URL; default `BROKER_URL`, else `amqp://guest:guest@127.0.0.1:5672/`."""
    queue: str | None = Field(default=None, pattern=QUEUE_RE)
    """Durable queue to consume (declared if missing); default `jobwire.<job>.<trigger id>`."""
    exchange: str | None = Field(default=None, pattern=QUEUE_RE)
    """Bind the queue to this exchange (declared durable if missing) with `routing_keys`."""
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    routing_keys: list[str] = Field(default_factory=lambda: ["#"], max_length=100)
    event_key: str | None = None
    """A body field that identifies the event for deduplication; default the message's
    `message_id`, else a hash of the routing key and the body."""
    prefetch: int = Field(default=256, ge=1, le=65_535)
    """Messages in flight at most (unacknowledged): the bound on work not yet recorded."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _amqp_url(v)


class AmqpSettings(BaseSettings):
    """`[amqp]` settings. The broker URL also answers to seed 000's `BROKER_URL`."""

    model_config = SettingsConfigDict(env_prefix="JOBWIRE_AMQP_", extra="ignore")

    url: str | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("JOBWIRE_AMQP_URL", "BROKER_URL")
    )
    """The broker; setting it turns on the shared intake queue and the status publisher."""
    intake: bool = True
    """Consume `intake_queue` when a broker URL is set (seed 000's intake)."""
    intake_queue: str = Field(default="jobwire.events", pattern=QUEUE_RE)
    dead_letter_exchange: str = Field(default="jobwire.dead", pattern=QUEUE_RE)
    """Messages that cannot become a run go here (and to the durable queue of the same name),
    with `x-jobwire-reason` saying why."""
    prefetch: int = Field(default=256, ge=1, le=65_535)
    status: bool = True
    """Publish every status document to `status_exchange` when a broker URL is set (seed 000)."""
    status_exchange: str = Field(default="jobwire.status", pattern=QUEUE_RE)
    status_routing_key: str = "{job}.{action}"
    """Routing key of a status document; `{job}` and `{action}` are filled in."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if not v else _amqp_url(v)

    @field_validator("status_routing_key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            v.format(job="j", action="a")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{job}} and {{action}} can be filled in, got {v!r}") from exc
        return v


def global_bindings(settings: Any) -> list[Any]:
    """Seed 000's shared queue: on when a broker URL is set and the intake is not turned off."""
    from jobwire.sources.base import Binding

    if not isinstance(settings, AmqpSettings) or not settings.url or not settings.intake:
        return []
    trigger = AmqpTrigger(url=settings.url, queue=settings.intake_queue, prefetch=settings.prefetch)
    return [Binding(job=None, trigger_id="amqp", trigger=trigger)]


PLUG: SourcePlug = SourcePlug(
    kind="amqp",
    trigger=AmqpTrigger,
    settings=AmqpSettings,
    load="jobwire.sources.amqp.source:build",
    extra="amqp",
    global_bindings=global_bindings,
    sink="jobwire.sinks.amqp:build_sink",
    sink_wanted=lambda settings: bool(settings.url and settings.status),
)
