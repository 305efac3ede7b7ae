"""The `s3` trigger and the `[s3]` settings section — pure pydantic, no client library.

Seed 000: a file landing in the bucket `BUCKET_NAME` is announced by S3 on the SQS queue
`SQS_QUEUE_NAME` (both default `local-tests`, as the seed says); the default rule maps the key
`ENVIRONMENT/JOB-NAME/FILE` to job `JOB-NAME` with `input_location` = the key and `environment`
= the first level. This shared intake is ON when `JOBWIRE_S3_INTAKE=true`, or — left unset —
when `BUCKET_NAME` or `SQS_QUEUE_NAME` (or `JOBWIRE_S3_BUCKET` / `JOBWIRE_S3_QUEUE`) is set;
`JOBWIRE_S3_INTAKE=false` turns it off. A job may also declare its own `s3` trigger with a key
pattern whose named groups become parameters.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobwire.model import _Trigger
from jobwire.plug import SourcePlug
from jobwire.sources.sqs.spec import check_queue

DEFAULT_BUCKET = "local-tests"
DEFAULT_QUEUE = "local-tests"
BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
SEED_RULE = r"^(?P<environment>[^/]+)/(?P<job>[^/]+)/(?P<file>.+)$"
"""Seed 000's `ENVIRONMENT/JOB-NAME/FILE`."""

Category = Literal["created", "removed"]


class S3Trigger(_Trigger):
    """Run the job for each object created (or removed) in a bucket, announced through SQS."""

    type: Literal["s3"] = "s3"
    bucket: str | None = Field(default=None, pattern=BUCKET_RE)
    """Default `BUCKET_NAME` (else `local-tests`)."""
    queue: str | None = None
    """The queue S3 notifies (name or URL); default `SQS_QUEUE_NAME` (else `local-tests`)."""
    key_pattern: str | None = Field(default=None, max_length=1000)
    """A regular expression the (decoded) key must match, in full; its named groups become
    parameters. Default seed 000's rule for this job: `ENVIRONMENT/<job>/FILE`."""
    events: list[Category] = Field(default_factory=lambda: list[Category](["created"]), min_length=1)
    """Which events run the job: objects `created`, `removed`."""
    visibility_timeout: int = Field(default=30, ge=1, le=43_200)

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return None if v is None else check_queue(v)

    @field_validator("key_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"key_pattern is not a regular expression: {exc}") from exc
        return v


class S3Settings(BaseSettings):
    """`[s3]` settings, with seed 000's plain `BUCKET_NAME` and `SQS_QUEUE_NAME`."""

    model_config = SettingsConfigDict(env_prefix="JOBWIRE_S3_", extra="ignore")

    bucket: str | None = Field(
        default=None,
        pattern=BUCKET_RE,
        validation_alias=AliasChoices("JOBWIRE_S3_BUCKET", "BUCKET_NAME"),
    )
    """The bucket (seed 000's `BUCKET_NAME`); effective default `local-tests`."""
    queue: str | None = Field(
        default=None, validation_alias=AliasChoices("JOBWIRE_S3_QUEUE", "SQS_QUEUE_NAME")
    )
    """The queue S3 notifies (seed 000's `SQS_QUEUE_NAME`); effective default `local-tests`."""
    intake: bool | None = None
    """Seed 000's intake: true / false; unset: on when a bucket or queue is set."""
    bootstrap: bool = True
    """Create the bucket and queue if missing, set the queue policy and the bucket notification
    (merged). False: only consume (for a least-privilege role; see docs/aws.md)."""
    endpoint_url: str | None = None
    """Override the S3 endpoint (default: botocore's resolution, `AWS_ENDPOINT_URL_S3` …)."""
    sqs_endpoint_url: str | None = None
    """Override the SQS endpoint of the notification queue."""
    region: str | None = None
    max_receive_count: int = Field(default=10, ge=1, le=1000)
    """The redrive policy set on the queue when it has none."""

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return None if not v else check_queue(v)

    @model_validator(mode="after")
    def _on(self) -> S3Settings:
        if self.intake is None:
            self.intake = bool(self.bucket or self.queue)
        return self

    @property
    def bucket_name(self) -> str:
        return self.bucket or DEFAULT_BUCKET

    @property
    def queue_name(self) -> str:
        return self.queue or DEFAULT_QUEUE


def global_bindings(settings: Any) -> list[Any]:
    """Seed 000's intake: the default rule on `BUCKET_NAME` through `SQS_QUEUE_NAME`."""
    from jobwire.sources.base import Binding

    if not isinstance(settings, S3Settings) or not settings.intake:
        return []
    trigger = S3Trigger(bucket=settings.bucket_name, queue=settings.queue_name, key_pattern=SEED_RULE)
    return [Binding(job=None, trigger_id="s3", trigger=trigger)]


PLUG: SourcePlug = SourcePlug(
    kind="s3",
    trigger=S3Trigger,
    settings=S3Settings,
    load="jobwire.sources.s3.source:build",
    extra="aws",
    global_bindings=global_bindings,
)
