"""The `log` sink: every status document as one structured log line (never parameters)."""

from __future__ import annotations

import structlog

from jobwire.config import LogSinkSpec
from jobwire.model import StatusDocument
from jobwire.sinks.base import Sink

log = structlog.get_logger(__name__)


class LogSink(Sink):
    kind = "log"
    max_attempts = 1

    def __init__(self, spec: LogSinkSpec | None = None) -> None:
        self.spec = spec or LogSinkSpec()

    async def publish(self, doc: StatusDocument) -> None:
        # The error's reason and code only: its message can quote a response body.
        log.info(
            "status",
            run_id=doc.run_id,
            job=doc.job,
            action=doc.action,
            attempt=doc.attempt,
            event_id=doc.event_id,
            environment=doc.environment,
            active=doc.status.active,
            succeeded=doc.status.succeeded,
            failed=doc.status.failed,
            error_reason=doc.error.reason if doc.error else None,
            error_code=doc.error.code if doc.error else None,
        )
