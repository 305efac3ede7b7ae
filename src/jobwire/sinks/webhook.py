"""The `webhook` sink: POST every status document, signed (see `jobwire.signing`).

Headers: `Content-Type: application/json`, `Jobwire-Delivery: <run_id>:<attempt>:<action>` (the
same for every retry of one document, so a receiver can dedupe), and `Jobwire-Signature:
t=<unix time>,v1=<hex hmac>` when a secret is configured: HMAC-SHA256 over
`<delivery>.<t>.<body>`, so the delivery id a receiver dedupes on is authenticated too. Anything
but a 2xx, or a network error, raises: the engine retries with backoff up to `max_attempts`.
"""

from __future__ import annotations

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


def delivery_id(doc: StatusDocument) -> str:
    return f"{doc.run_id}:{doc.attempt}:{doc.action}"


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
        delivery = delivery_id(doc)
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
