"""The EC2 (and SSM) calls the spot target makes, through aiobotocore — the only module of the
target that imports an AWS library. Answers are plain dicts as botocore parses them.

Endpoint, region and credentials come from the standard AWS chain (environment, profile, instance
role, web identity), including `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2`; a job's `region` and
`endpoint_url` override them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

AwsError = (ClientError, BotoCoreError)
"""What a failed call raises (for `except`)."""

_CONFIG = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=10, read_timeout=30)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


class Ec2:
    """One EC2 client (and an SSM client, opened when first needed) for one region/endpoint."""

    def __init__(self, region: str | None, endpoint_url: str | None) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self._session = get_session()
        self._stack = contextlib.AsyncExitStack()
        self._ec2: Any = None
        self._ssm: Any = None

    async def _client(self, service: str) -> Any:
        return await self._stack.enter_async_context(
            self._session.create_client(
                service, region_name=self.region, endpoint_url=self.endpoint_url, config=_CONFIG
            )
        )

    async def ec2(self) -> Any:
        if self._ec2 is None:
            self._ec2 = await self._client("ec2")
        return self._ec2

    async def warm(self) -> None:
        """Open the EC2 client ahead of the first run: its service model (a few MB of JSON) is read
        in a thread, so neither the first run nor the event loop waits for it."""
        if self._ec2 is None:
            loader = self._session.get_component("data_loader")
            await asyncio.to_thread(loader.load_service_model, "ec2", "service-2")
            await self.ec2()

    async def close(self) -> None:
        self._ec2 = self._ssm = None
        await self._stack.aclose()

    # ------------------------------------------------------------------ calls
    async def request_spot(
        self, token: str, launch: dict[str, Any], tags: dict[str, str], max_price: str | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "ClientToken": token,
            "InstanceCount": 1,
            "Type": "one-time",
            "InstanceInterruptionBehavior": "terminate",
            "LaunchSpecification": launch,
            "TagSpecifications": [
                {
                    "ResourceType": "spot-instances-request",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        }
        if max_price:
            kwargs["SpotPrice"] = max_price
        out = await (await self.ec2()).request_spot_instances(**kwargs)
        return dict(out["SpotInstanceRequests"][0])

    async def describe_requests(
        self, ids: list[str] | None = None, tags: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if ids:
            kwargs["SpotInstanceRequestIds"] = ids
        if tags:
            kwargs["Filters"] = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        client = await self.ec2()
        try:
            out = await client.describe_spot_instance_requests(**kwargs)
        except ClientError as exc:
            if error_code(exc) == "InvalidSpotInstanceRequestID.NotFound":
                return []  # not visible yet (EC2 is eventually consistent)
            raise
        return [dict(r) for r in out.get("SpotInstanceRequests", [])]

    async def describe_instances(
        self,
        ids: list[str] | None = None,
        tags: dict[str, str] | None = None,
        states: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in (tags or {}).items()]
        if states:
            filters.append({"Name": "instance-state-name", "Values": states})
        kwargs: dict[str, Any] = {}
        if ids:
            kwargs["InstanceIds"] = ids
        if filters:
            kwargs["Filters"] = filters
        client = await self.ec2()
        try:
            pages = client.get_paginator("describe_instances").paginate(**kwargs)
            return [dict(i) async for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceID.NotFound":
                return []
            raise

    async def create_tags(self, ids: list[str], tags: dict[str, str]) -> None:
        await (await self.ec2()).create_tags(
            Resources=ids, Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
        )

    async def terminate(self, instance_ids: list[str]) -> None:
        try:
            await (await self.ec2()).terminate_instances(InstanceIds=instance_ids)
        except ClientError as exc:
            if error_code(exc) != "InvalidInstanceID.NotFound":
                raise

    async def cancel_requests(self, request_ids: list[str]) -> None:
        try:
            await (await self.ec2()).cancel_spot_instance_requests(SpotInstanceRequestIds=request_ids)
        except ClientError as exc:
            if error_code(exc) != "InvalidSpotInstanceRequestID.NotFound":
                raise

    async def ssm_parameter(self, name: str) -> str:
        if self._ssm is None:
            self._ssm = await self._client("ssm")
        out = await self._ssm.get_parameter(Name=name)
        return str(out["Parameter"]["Value"])
