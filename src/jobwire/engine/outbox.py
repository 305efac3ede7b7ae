"""The outbox relay: hands a durable sink the status documents waiting in the store's outbox, in
the order they were written, and deletes them once the sink returned (the broker confirmed them).

Documents reach the outbox in the same transaction as the state change they describe
(`StatusHub.publish` → `Committer.outbox`), so a document is never lost to a crash or a broker
outage: it waits in the store and goes out when the broker is back, in order per run (and overall).
A crash after the broker confirmed a batch but before its rows were deleted sends that batch again
(the only case of a repeat: consumers can dedupe by `run_id` + `action` + `time`).

The relay runs supervised: a sink that fails raises, is logged, shown in `/readyz` and retried with
backoff; the outbox is bounded (`max_rows`), past it new documents for that sink are dropped and
counted (`jobwire_sink_dropped_total`). Idle, it waits for a commit that wrote rows for its sink.
"""

from __future__ import annotations

import asyncio

from jobwire.engine.metrics import Metrics
from jobwire.sinks.base import Sink
from jobwire.store import Store

BATCH = 500
MAX_ROWS = 100_000


class OutboxRelay:
    def __init__(self, store: Store, sink: Sink, metrics: Metrics, max_rows: int = MAX_ROWS) -> None:
        self.store = store
        self.sink = sink
        self.name = sink.outbox_name
        self.metrics = metrics
        self.max_rows = max_rows
        self.pending = 0
        """Rows waiting (counted at start, then kept up to date without asking the store)."""
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Rows for this sink were committed."""
        self._wake.set()

    def room(self) -> bool:
        """Whether one more document fits; counts it as pending when it does."""
        if self.pending >= self.max_rows:
            return False
        self.pending += 1
        self._gauge()
        return True

    def _gauge(self) -> None:
        self.metrics.outbox_pending.labels(self.sink.kind).set(self.pending)

    async def run(self) -> None:
        self.pending = await self.store.outbox_size(self.name)
        self._gauge()
        while True:
            rows = await self.store.outbox_take(self.name, BATCH)
            if not rows:
                self._wake.clear()
                rows = await self.store.outbox_take(self.name, BATCH)  # committed meanwhile?
                if not rows:
                    await self._wake.wait()
                    continue
            await self.sink.publish_batch([doc for _, doc in rows])  # raises: retried with backoff
            await self.store.outbox_done(self.name, rows[-1][0])
            self.pending = max(0, self.pending - len(rows))
            self.metrics.outbox_published.labels(self.sink.kind).inc(len(rows))
            self._gauge()


__all__ = ["OutboxRelay"]
