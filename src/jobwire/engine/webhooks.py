"""Webhook deliveries: find the job's webhook trigger and check a delivery's signature.

Two steps, so the API can refuse an unsigned delivery before it reads the body: `precheck` needs
only the headers (the trigger exists, its secret is configured, the signature header and the
delivery id are well-formed); `verify_body` then checks the HMAC over
`<delivery id>.<timestamp>.<raw body>` (see `jobwire.signing`). The delivery id is signed, so
the run key derived from it cannot be changed by whoever replays a captured delivery.
`Webhooks` does both for the engine and hands the verified delivery to the intake.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jobwire.engine.errors import Conflict, EngineError, Forbidden, JobNotFound
from jobwire.model import Admission, EventOutcome, Incoming, Job, WebhookTrigger
from jobwire.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    ReplayGuard,
    SignatureError,
    check_delivery,
    parse_header,
    verify,
)
from jobwire.store import StoredJob


class WebhookRefused(Exception):
    """A delivery is refused. `status`: 403 (signature), 404 (no such trigger), 400 (ambiguous)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery whose headers passed `precheck`: what `verify_body` and the intake need."""

    trigger_id: str
    trigger: WebhookTrigger
    secret: bytes
    signature: str
    delivery: str


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def precheck(job: Job, trigger_id: str | None, headers: dict[str, str]) -> Delivery:
    """Everything that can be checked without the body. Raises WebhookRefused."""
    hooks = [
        (tid, t)
        for tid, t in zip(job.trigger_ids(), job.triggers, strict=True)
        if isinstance(t, WebhookTrigger) and (trigger_id is None or tid == trigger_id)
    ]
    if not hooks:
        raise WebhookRefused(
            404, f"job {job.name!r} has no webhook trigger" + (f" {trigger_id!r}" if trigger_id else "")
        )
    if len(hooks) > 1:
        raise WebhookRefused(
            400, f"job {job.name!r} has several webhook triggers; POST to /webhook/<trigger id>"
        )
    tid, trig = hooks[0]
    secret = trig.secret or os.environ.get(trig.secret_env or "", "")
    if not secret:
        raise WebhookRefused(
            403, f"webhook secret not configured: set the environment variable {trig.secret_env}"
        )
    h = _lower(headers)
    signature = h.get(SIGNATURE_HEADER.lower())
    delivery = h.get(DELIVERY_HEADER.lower())
    try:
        parse_header(signature)
        delivery = check_delivery(delivery)
    except SignatureError as exc:
        raise WebhookRefused(403, f"webhook signature rejected: {exc}") from None
    assert signature is not None
    return Delivery(tid, trig, secret.encode(), signature, delivery)


def verify_body(d: Delivery, body: bytes, now: float | None = None) -> None:
    """The HMAC and the timestamp. Raises WebhookRefused (403) naming what failed."""
    try:
        verify(
            d.secret,
            body,
            d.signature,
            time.time() if now is None else now,
            d.trigger.tolerance.total_seconds(),
            delivery=d.delivery,
        )
    except SignatureError as exc:
        raise WebhookRefused(403, f"webhook signature rejected: {exc}") from None


_ERRORS: dict[int, type[EngineError]] = {403: Forbidden, 404: JobNotFound}


class Webhooks:
    """Signed webhook deliveries into the intake: verified, then submitted with the delivery id as
    the event key; a replayed delivery is refused as a conflict."""

    def __init__(
        self, get_job: Callable[[str], StoredJob], submit: Callable[[Incoming], Awaitable[Admission]]
    ) -> None:
        self._get_job = get_job
        self._submit = submit
        self.replay_guard = ReplayGuard(capacity=100_000, ttl=3600)

    def precheck(self, job: str, trigger_id: str | None, headers: dict[str, str]) -> Delivery:
        """What can be refused before the body is read: an unknown job or trigger, an unset
        secret, a missing or malformed signature header or delivery id."""
        try:
            return precheck(self._get_job(job).job, trigger_id, headers)
        except WebhookRefused as exc:
            raise _ERRORS.get(exc.status, EngineError)(str(exc)) from None

    async def receive(
        self,
        job: str,
        trigger_id: str | None,
        body: bytes,
        headers: dict[str, str],
        checked: Delivery | None = None,
    ) -> Admission:
        """Verify the HMAC signature over delivery id, timestamp and body, then submit. The run
        key comes from the (signed) delivery id: a replayed delivery is a recorded duplicate (409)."""
        d = checked or self.precheck(job, trigger_id, headers)
        try:
            verify_body(d, body)
        except WebhookRefused as exc:
            raise Forbidden(str(exc)) from None
        replayed = self.replay_guard.seen(f"{job}/{d.trigger_id}/{d.delivery}", time.time())
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        except RecursionError:
            raise EngineError("the webhook body is nested too deeply") from None
        adm = await self._submit(
            Incoming(job=job, trigger=d.trigger_id, source="webhook", payload=payload, event_key=d.delivery)
        )
        if replayed or adm.event.outcome == EventOutcome.duplicate:
            raise Conflict(
                f"delivery {d.delivery!r} was already received (event {adm.event.id} recorded as duplicate)"
            )
        return adm


__all__ = ["Delivery", "WebhookRefused", "Webhooks", "precheck", "verify_body"]
