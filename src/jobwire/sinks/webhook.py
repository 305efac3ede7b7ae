"""The `webhook` sink: POST every status document, signed (see `jobwire.signing`).

Headers: `Content-Type: application/json`, `Jobwire-Delivery: <run_id>:<attempt>:<action>:<hash>`
(see `delivery_id`: one id per document, the same for every retry of that document, so a receiver
can dedupe on it), and `Jobwire-Signature: t=<unix time>,v1=<hex hmac>` when a secret is
configured: HMAC-SHA256 over `<delivery>.<t>.<body>`, so the delivery id a receiver dedupes on is
authenticated too. Anything but a 2xx, or a network error, raises: the engine retries with backoff
up to `max_attempts`.
"""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import urlsplit

import httpx
import structlog

from jobwire.config import WebhookSinkSpec
from jobwire.model import StatusDocument
from jobwire.netguard import DestinationRefused, GuardedTransport
from jobwire.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from jobwire.sinks.base import Sink

log = structlog.get_logger(__name__)


class SinkConfigError(Exception):
    """A sink cannot start as configured (the message names the setting)."""


class DeliveryError(Exception):
    """A status document was not accepted by the receiver; publishing again may succeed."""


DELIVERY_HASH_CHARS = 16
"""Hex digits of SHA-256 in a delivery id (64 bits: no collision among one run's documents)."""


def delivery_id(doc: StatusDocument, body: bytes | None = None) -> str:
    """`<run_id>:<attempt>:<action>:<first 16 hex digits of SHA-256 of the body>`.

    One run publishes many documents with the same run, attempt and action (a Kubernetes run
    reports every JobStatus change as `running`), so those three alone do not identify a document:
    a receiver deduping on them dropped the completion (issue 12). The hash is over the exact bytes
    sent, `time` included. A retry sends the same document, so the same bytes and the same id. A
    document published again later with an equal status (a Job going active 1 -> 0 -> 1) has
    another `time`, so it is a new delivery, not a duplicate of the earlier one: a receiver that
    wants to skip unchanged statuses compares `status` itself. `body` defaults to the document's
    JSON as `publish` sends it."""
    raw = doc.model_dump_json().encode() if body is None else body
    digest = hashlib.sha256(raw).hexdigest()[:DELIVERY_HASH_CHARS]
    return f"{doc.run_id}:{doc.attempt}:{doc.action}:{digest}"


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(self, spec: WebhookSinkSpec) -> None:
        self.spec = spec
        self.max_attempts = spec.max_attempts
        parts = urlsplit(spec.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkConfigError(
                f"webhook sink url must be an absolute http(s) URL, got scheme {parts.scheme!r}"
            )
        # For messages: the destination without credentials, query or path (they may carry tokens).
        self.destination = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
        self._secret: bytes | None = None
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.spec.secret_env:
            value = os.environ.get(self.spec.secret_env)
            if not value:
                raise SinkConfigError(
                    f"webhook sink {self.destination}: environment variable {self.spec.secret_env} "
                    "(secret_env) is not set or empty"
                )
            self._secret = value.encode()
        elif self.spec.secret is not None:
            self._secret = self.spec.secret.get_secret_value().encode()
        transport = (
            httpx.AsyncHTTPTransport(trust_env=False) if self.spec.allow_private else GuardedTransport()
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.spec.timeout.total_seconds()),
            follow_redirects=False,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def headers(self, body: bytes, doc: StatusDocument, now: int | None = None) -> dict[str, str]:
        delivery = delivery_id(doc, body)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery}
        if self._secret is not None:
            ts = int(time.time()) if now is None else now
            headers[SIGNATURE_HEADER] = sign(self._secret, body, ts, delivery=delivery)
        return headers

    async def publish(self, doc: StatusDocument) -> None:
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = doc.model_dump_json().encode()
        try:
            response = await self._client.post(self.spec.url, content=body, headers=self.headers(body, doc))
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {self.destination}: {type(exc).__name__}: {exc}") from exc
        except DestinationRefused as exc:
            raise DeliveryError(
                f"webhook {self.destination}: destination {exc.address} is not a public address; "
                "set `allow_private: true` on this sink to allow it"
            ) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"webhook {self.destination} answered HTTP {response.status_code}")
        log.debug("status delivered", sink="webhook", run_id=doc.run_id, action=doc.action)
