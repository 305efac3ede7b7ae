"""AWS clients and SQS queue plumbing shared by the `sqs` and `s3` kinds (aiobotocore).

Endpoint, region and credentials follow botocore's standard resolution — `AWS_ENDPOINT_URL`
and the per-service `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_S3`, `AWS_REGION` /
`AWS_DEFAULT_REGION`, `AWS_PROFILE` and the config files, web identity (EKS), the instance role —
unless a kind's settings override the endpoint or the region. With no region anywhere,
`us-east-1`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from typing import Any

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from jobwire.sources.sqs.spec import dead_letter_name, queue_name_of

DEFAULT_REGION = "us-east-1"
MISSING_QUEUE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


@functools.cache
def user_agent() -> str:
    """`jobwire/<version> aiobotocore/<v> botocore/<v> Python/<v>`, and `app/<id>` when
    `AWS_SDK_UA_APP_ID` (or `sdk_ua_app_id`) is set. Given as botocore's `user_agent` setting, it
    is used as it is: botocore's own structured User-Agent is assembled, sanitised and rebuilt for
    every request (twice), ~9 % of jobwire's CPU per SQS message in the intake bench (py-spy)."""
    import platform

    import aiobotocore  # type: ignore[import-untyped]
    import botocore  # type: ignore[import-untyped]

    try:
        version = importlib.metadata.version("jobwire")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        version = "0"
    ua = (
        f"jobwire/{version} aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__} "
        f"Python/{platform.python_version()}"
    )
    app = get_session().get_config_variable("user_agent_appid")
    return f"{ua} app/{app}" if app else ua


def client(
    service: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    pool: int = 32,
    validate: bool = True,
) -> Any:
    """An aiobotocore client context manager (`async with client("sqs") as sqs:`). `pool`: its
    connection pool (`max_pool_connections`), at least the calls made at once — a request beyond
    it waits for a connection, and a long poll holds one for up to 20 s. `validate=False` skips
    botocore's client-side check of each call's parameters against the service model (for calls
    whose parameters jobwire builds itself from validated settings; the service still checks)."""
    session = get_session()
    region = region or session.get_config_variable("region") or DEFAULT_REGION
    config = AioConfig(
        connect_timeout=10,
        read_timeout=45,  # > the 20 s long poll
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=pool,
        parameter_validation=validate,
        user_agent=user_agent(),
    )
    endpoint = endpoint_url or None
    return session.create_client(service, region_name=region, endpoint_url=endpoint, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


async def queue_url(sqs: Any, queue: str, *, create: bool, attributes: dict[str, str] | None = None) -> str:
    """The URL of `queue` (a name or a URL), created with `attributes` if missing and `create`."""
    name = queue_name_of(queue)
    try:
        if "://" in queue:
            await sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
            return queue
        return str((await sqs.get_queue_url(QueueName=name))["QueueUrl"])
    except ClientError as exc:
        if error_code(exc) not in MISSING_QUEUE or not create:
            raise
    attrs = dict(attributes or {})
    if name.endswith(".fifo"):
        attrs["FifoQueue"] = "true"
    return str((await sqs.create_queue(QueueName=name, Attributes=attrs))["QueueUrl"])


async def attributes(sqs: Any, url: str, *names: str) -> dict[str, str]:
    got = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))
    return dict(got.get("Attributes") or {})


async def ensure_dead_letter_queue(sqs: Any, url: str, *, create: bool, max_receive_count: int) -> str:
    """The queue's dead-letter queue URL: the one its redrive policy names, else `<queue>-dlq`
    (created if missing, and set as the queue's redrive policy when `create`)."""
    attrs = await attributes(sqs, url, "QueueArn", "RedrivePolicy", "Policy")
    policy = attrs.get("RedrivePolicy")
    if policy:
        target = str(json.loads(policy).get("deadLetterTargetArn", ""))
        if target:
            arn_name = target.rsplit(":", 1)[-1]
            return str((await sqs.get_queue_url(QueueName=arn_name))["QueueUrl"])
    dlq_url = await queue_url(sqs, dead_letter_name(url), create=create)
    if create:
        dlq_arn = (await attributes(sqs, dlq_url, "QueueArn"))["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
        new = {"RedrivePolicy": json.dumps(redrive)}
        if attrs.get("Policy"):  # written back as it was: moto's server drops it otherwise
            new["Policy"] = attrs["Policy"]
        await sqs.set_queue_attributes(QueueUrl=url, Attributes=new)
    return dlq_url
