"""The `sqs` trigger and the `[sqs]` settings section — pure pydantic, no client library.

A job's trigger long-polls an SQS queue (a name, or a queue URL); each JSON message is one event.
With `JOBWIRE_SQS_INTAKE_QUEUE` set, jobwire also consumes that queue as a shared intake where
each message names its job in a `job` field (or seed 000's `name`).

**Event key** (what makes a redelivered message a `duplicate`): `event_key: <name>` — a message
attribute of that name, else a field of the JSON body; otherwise, on a FIFO queue, the message's
deduplication id; otherwise the SQS message id (kept across redeliveries of one message).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobwire.model import _Trigger
from jobwire.plug import SourcePlug

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")


def queue_name_of(queue: str) -> str:
    """The queue's name, from a name or a queue URL."""
    return queue.rstrip("/").rsplit("/", 1)[-1] if "://" in queue else queue


def check_queue(v: str) -> str:
    if "://" in v and not v.startswith(("https://", "http://")):
        raise ValueError(f"a queue URL must be http(s)://…, got {v!r}")
    name = queue_name_of(v)
    if not QUEUE_NAME_RE.match(name) or len(name) > 80:
        raise ValueError(
            f"{name!r} is not an SQS queue name (letters, digits, '-', '_', at most 80, '.fifo' for FIFO)"
        )
    return v


def dead_letter_name(queue: str) -> str:
    """`<queue>-dlq` (`<queue>-dlq.fifo` for a FIFO queue), within SQS's 80 characters."""
    name = queue_name_of(queue)
    if name.endswith(".fifo"):
        return name[:-5][:71] + "-dlq.fifo"
    return name[:76] + "-dlq"


class SqsTrigger(_Trigger):
    """Run the job for each JSON message on an SQS queue."""

    type: Literal["sqs"] = "sqs"
    queue: str
    """Queue name (`jobs`, `jobs.fifo`) or queue URL; created if missing (see `create`)."""
    event_key: str | None = Field(default=None, min_length=1, max_length=256)
    """A message attribute, else a JSON body field, identifying the event; default the FIFO
    deduplication id, else the SQS message id."""
    group_param: str | None = Field(default="message_group_id", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    """FIFO: the parameter that receives the message group id (declare it and name it as the
    job's `concurrency.key` to run one group at a time); null: not passed."""
    batch_size: int = Field(default=10, ge=1, le=10)
    """Messages per ReceiveMessage (SQS's maximum is 10), handed to the engine in one submit."""
    wait_time: int = Field(default=20, ge=0, le=20)
    """Long polling, seconds (SQS's maximum is 20)."""
    visibility_timeout: int = Field(default=30, ge=1, le=43_200)
    """Seconds a received message stays hidden; extended while its runs are being recorded."""
    pollers: int = Field(default=2, ge=1, le=16)
    """Concurrent ReceiveMessage loops. Each receives its next batch while its previous one is
    committed and deleted: at most `2 × pollers × batch_size` messages in flight (received, not
    yet deleted)."""
    create: bool = True
    """Create the queue (and its dead-letter queue, with the redrive policy) if missing."""
    max_receive_count: int = Field(default=10, ge=1, le=1000)
    """The redrive policy set when the queue has none: after this many receives without being
    deleted, SQS itself moves the message to the dead-letter queue."""

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        return check_queue(v)

    @property
    def fifo(self) -> bool:
        return queue_name_of(self.queue).endswith(".fifo")


class SqsSettings(BaseSettings):
    """`[sqs]` settings. Endpoint, region and credentials come from the standard AWS chain
    (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`, `AWS_REGION`, profile, instance role, web
    identity); these override it for this kind only."""

    model_config = SettingsConfigDict(env_prefix="JOBWIRE_SQS_", extra="ignore")

    endpoint_url: str | None = None
    """Override the SQS endpoint (default: botocore's resolution)."""
    region: str | None = None
    """Override the region (default: botocore's resolution, else us-east-1)."""
    intake_queue: str | None = None
    """A shared intake queue whose messages name their job in `job` (or `name`)."""
    intake: bool = True
    """Consume `intake_queue` when it is set."""

    @field_validator("intake_queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return None if not v else check_queue(v)


def global_bindings(settings: Any) -> list[Any]:
    from jobwire.sources.base import Binding

    if not isinstance(settings, SqsSettings) or not settings.intake_queue or not settings.intake:
        return []
    return [Binding(job=None, trigger_id="sqs", trigger=SqsTrigger(queue=settings.intake_queue))]


PLUG: SourcePlug = SourcePlug(
    kind="sqs",
    trigger=SqsTrigger,
    settings=SqsSettings,
    load="jobwire.sources.sqs.source:build",
    extra="aws",
    global_bindings=global_bindings,
)
