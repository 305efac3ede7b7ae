"""The spot target's settings (`JOBWIRE_SPOT_*`): defaults for what a job's `spot` target leaves
unset, and the target's own timings. Pure pydantic: no AWS library is imported here."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobwire.model import Duration


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class SpotSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBWIRE_SPOT_", extra="ignore")

    instance_types: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["t3.micro"])
    """Comma-separated; tried in turn when one has no spot capacity."""
    ami: str | None = None
    ami_parameter: str | None = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"
    """Used when neither the job nor `JOBWIRE_SPOT_AMI` names an AMI: an image with Docker."""
    subnet_id: str | None = None
    security_group_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    key_name: str | None = None
    instance_profile: str | None = None
    max_price: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    """Default: the standard chain (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`, the region's)."""
    max_requests: int = Field(default=5, ge=1, le=100)
    poll_min: Duration = timedelta(milliseconds=250)
    """First wait before looking at a new spot request again; doubled up to `poll_max`."""
    poll_max: Duration = timedelta(seconds=10)
    watch_interval: Duration = timedelta(seconds=10)
    """How often a running instance's request is checked for an interruption notice (AWS gives
    two minutes' notice)."""
    reconcile_interval: Duration = timedelta(minutes=1)
    """How often instances and requests tagged by this jobwire are checked against its runs."""
    owner: str | None = None
    """The `jobwire:owner` tag value; default derived from the data directory, so two jobwire
    installations in one account never touch each other's instances."""

    @field_validator("instance_types", "security_group_ids", mode="before")
    @classmethod
    def _comma(cls, v: object) -> object:
        return _split(v)
