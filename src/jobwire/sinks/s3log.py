"""The `s3log` sink (seed 004's "log to S3") and jobwire's S3 client.

**The sink.** When a run ends (a terminal status document: succeeded, failed, timed_out,
cancelled, interrupted), its log — what `GET /runs/{id}/log` serves: the target's own (a
Kubernetes pod's) or the one jobwire captured — is written to
`s3://<bucket>/<prefix>/<job>/<run_id>.log` (`text/plain; charset=utf-8`). Every other document
is ignored. The engine hands the sink its log reader (`Sink.bind`). An attempt that fails and is
retried also ends with a terminal document: its log is written then, and written again, whole,
when the run ends (same key: the last write holds the run's log). A failed upload raises, so the
engine publishes again with backoff up to `max_attempts` and counts each failure in
`jobwire_sink_failures_total{sink="s3log"}` (and a document given up on in
`jobwire_sink_dropped_total`).

**The client** (`S3`): the only jobwire module that imports aiobotocore/botocore (import-linter
says so); the job registry reads `JOBWIRE_JOBS=s3://bucket/key` through it too. Endpoint, region
and credentials come from botocore's standard chain: `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`
(MinIO, moto), `AWS_REGION`, `AWS_PROFILE` and the shared files, the instance or task role, web
identity on EKS. botocore's own retries (standard mode) cover throttling and 5xx within a call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import structlog

from jobwire.config import S3LogSinkSpec
from jobwire.model import RunState, StatusDocument
from jobwire.sinks.base import RunLogReader, Sink
from jobwire.sinks.webhook import DeliveryError, SinkConfigError

log = structlog.get_logger(__name__)

TERMINAL = frozenset(s.value for s in RunState if s.terminal)
TRUNCATED = "\n[jobwire: log cut at %d bytes for S3]\n"
READ_TIMEOUT = 120.0
"""Seconds reading one run's log may take (a target's log API that hangs fails the try)."""


class S3Error(Exception):
    """An S3 call failed; the message names the object (`s3://bucket/key`) and S3's error code."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def aws_missing(what: str) -> str:
    return f"{what} needs the Python package 'aiobotocore': pip install 'jobwire[aws]'"


def segment(value: str) -> str:
    """`value` as one safe key segment: anything but letters, digits and `-_.~` percent-encoded
    (a `/` cannot add a level), and `.` / `..` / empty never a segment of their own."""
    out = quote(value, safe="")
    if out.strip(".") == "":
        out = out.replace(".", "%2E") or "_"
    return out


def log_key(prefix: str, job: str, run_id: str) -> str:
    """`<prefix>/<job>/<run_id>.log`, each of job and run id one safe segment."""
    base = "/".join(p for p in prefix.split("/") if p)
    key = f"{segment(job)}/{segment(run_id)}.log"
    return f"{base}/{key}" if base else key


class S3:
    """A lazily opened aiobotocore S3 client; `close` releases its connections."""

    def __init__(self) -> None:
        self._session: Any = None
        self._context: Any = None
        self._client: Any = None

    @staticmethod
    def available() -> bool:
        try:
            import aiobotocore.session  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
        except ModuleNotFoundError:
            return False
        return True

    async def _open(self) -> Any:
        if self._client is None:
            from aiobotocore.config import AioConfig  # type: ignore[import-untyped, unused-ignore]
            from aiobotocore.session import get_session  # type: ignore[import-untyped, unused-ignore]

            if self._session is None:
                self._session = get_session()
            config = AioConfig(
                retries={"mode": "standard"}, connect_timeout=5, read_timeout=30
            )
            context = self._session.create_client("s3", config=config)
            self._client = await context.__aenter__()
            self._context = context
        return self._client

    async def close(self) -> None:
        context, self._context, self._client = self._context, None, None
        if context is not None:
            with contextlib.suppress(Exception):
                await context.__aexit__(None, None, None)

    async def _call(self, what: str, op: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped, unused-ignore]

        try:
            client = await self._open()
            return await getattr(client, op)(**kwargs)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
            raise S3Error(f"{what}: {code}: {err.get('Message') or exc}", code) from None
        except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
            raise S3Error(f"{what}: {type(exc).__name__}: {exc}") from None

    async def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        await self._call(
            f"s3://{bucket}/{key}", "put_object", Bucket=bucket, Key=key, Body=body, ContentType=content_type
        )

    async def etag(self, bucket: str, key: str) -> str:
        """The object's ETag (HeadObject: nothing downloaded)."""
        head = await self._call(f"s3://{bucket}/{key}", "head_object", Bucket=bucket, Key=key)
        return str(head["ETag"])

    async def get(self, bucket: str, key: str, max_bytes: int) -> tuple[str, bytes]:
        """(ETag, body) of the object, of which at most `max_bytes + 1` bytes are read (the
        caller tells a body longer than `max_bytes` by its length)."""
        what = f"s3://{bucket}/{key}"
        got = await self._call(what, "get_object", Bucket=bucket, Key=key)
        parts: list[bytes] = []
        size = 0
        try:
            async with got["Body"] as stream:
                while size <= max_bytes and (chunk := await stream.read(max_bytes + 1 - size)):
                    parts.append(chunk)
                    size += len(chunk)
        except Exception as exc:
            raise S3Error(f"{what}: reading the object: {type(exc).__name__}: {exc}") from None
        return str(got["ETag"]), b"".join(parts)


class S3LogSink(Sink):
    kind = "s3log"

    def __init__(self, spec: S3LogSinkSpec) -> None:
        self.spec = spec
        self.max_attempts = spec.max_attempts
        self.bucket = spec.bucket
        self.prefix = spec.prefix
        self.s3 = S3()
        self._run_log: RunLogReader | None = None

    def bind(self, *, run_log: RunLogReader) -> None:
        self._run_log = run_log

    def key(self, doc: StatusDocument) -> str:
        return log_key(self.prefix, doc.job, doc.run_id)

    async def start(self) -> None:
        if not S3.available():
            raise SinkConfigError(aws_missing("the s3log sink"))
        if self._run_log is None:
            raise SinkConfigError("the s3log sink was not given the engine's run log reader")

    async def close(self) -> None:
        await self.s3.close()

    async def read_log(self, run_id: str) -> bytes:
        assert self._run_log is not None
        cap = self.spec.max_bytes
        parts: list[bytes] = []
        size = 0
        stream: AsyncIterator[bytes] = self._run_log(run_id)
        try:
            async for chunk in stream:
                parts.append(chunk[: cap - size])
                size += len(parts[-1])
                if size >= cap:
                    parts.append((TRUNCATED % cap).encode())
                    break
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        return b"".join(parts)

    async def publish(self, doc: StatusDocument) -> None:
        if doc.action not in TERMINAL:
            return
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                body = await self.read_log(doc.run_id)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise DeliveryError(f"s3log: reading the log of run {doc.run_id}: {reason}") from None
        key = self.key(doc)
        try:
            await self.s3.put(self.bucket, key, body, "text/plain; charset=utf-8")
        except S3Error as exc:
            if exc.code is None:  # a connection problem: open a new client for the next try
                await self.s3.close()
            raise DeliveryError(f"s3log: {exc}") from None
        log.debug("run log written", sink="s3log", run_id=doc.run_id, key=key, bytes=len(body))
