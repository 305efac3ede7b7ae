"""The sink contract: where status documents go. One method: `publish`.

The engine gives each sink its own queue and worker, so a slow or failing sink never delays a
run or another sink; `publish` raising means "try again" (with backoff) up to the sink's limit.

A **durable** sink (`durable = True`, e.g. RabbitMQ) gets no in-memory queue: each document is
written to the store's outbox in the same transaction as the state change it describes, and a
relay hands the outbox over in order with `publish_batch`, deleting rows only once that returned
(the broker confirmed them). While the sink is away, documents wait in the store, across restarts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

from jobwire.model import StatusDocument

RunLogReader = Callable[[str], AsyncIterator[bytes]]
"""`run_log(run_id)`: a run's log as `GET /runs/{id}/log` serves it (the target's, else jobwire's)."""


class Sink(ABC):
    kind: ClassVar[str]
    max_attempts: int = 5
    durable: ClassVar[bool] = False

    @property
    def outbox_name(self) -> str:
        """The name of this sink's rows in the outbox (durable sinks)."""
        return self.kind

    async def publish_batch(self, docs: list[str]) -> None:
        """Durable sinks: publish these documents (JSON, oldest first) and return once the receiver
        has confirmed every one; raise to have the same batch retried (with backoff)."""
        raise NotImplementedError(f"the {self.kind} sink is not durable")

    def bind(self, *, run_log: RunLogReader) -> None:
        """What the engine offers every sink before `start` (a sink keeps what it needs)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @abstractmethod
    async def publish(self, doc: StatusDocument) -> None: ...
