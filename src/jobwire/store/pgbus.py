"""LISTEN/NOTIFY between the jobwire replicas sharing one PostgreSQL database (`Store.bus`).

One dedicated connection LISTENs on every subscribed channel (a pooled connection cannot: the pool
would hand it to a query, and LISTEN belongs to a session). `run` is a supervised loop: it connects,
LISTENs, tells its owner it is connected (after a reconnect, so that it re-reads what it may have
missed: notifications sent while no session listened are not queued for it), then waits until the
connection is lost and raises, so the supervisor logs it, shows it in /readyz and calls `run`
again with backoff. Nothing polls: the connection's termination is the wake-up.

Notifications are sent over the store's pool, many in one statement (`notify_many`), outside any
transaction (status documents); the jobs table's own trigger sends the catalogue's in the
transaction that changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog

from jobwire.store.base import MAX_PAYLOAD, Bus, StoreError
from jobwire.store.queries import Queries

Q = Queries("postgres")
log = structlog.get_logger(__name__)

CONNECT_TIMEOUT = 10.0
APPLICATION_NAME = "jobwire-listen"


class PgBus(Bus):
    def __init__(self, url: str, pool: Callable[[], Any], masked: str) -> None:
        self._url = url
        self._pool = pool
        """The store's pool (a callable: it raises when the store is closed)."""
        self._masked = masked
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._conn: asyncpg.Connection | None = None
        self._runs = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def subscribe(self, channel: str, handler: Callable[[str], None]) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def _deliver(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception as exc:  # one bad handler or payload must not stop the others
                log.warning("notification handler failed", channel=channel, error=str(exc))

    async def run(self, connected: Callable[[bool], Awaitable[None]]) -> None:
        try:
            conn = await asyncpg.connect(
                self._url, timeout=CONNECT_TIMEOUT, server_settings={"application_name": APPLICATION_NAME}
            )
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self._masked} to LISTEN: {exc}") from exc
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_lost(_conn: Any) -> None:
            if not lost.done():
                lost.set_result(None)

        conn.add_termination_listener(on_lost)
        try:
            for channel in self._handlers:
                await conn.add_listener(channel, self._deliver)
            self._conn = conn
            again, self._runs = self._runs > 0, self._runs + 1
            if again:
                log.info("listening to the other replicas again", channels=sorted(self._handlers))
            await connected(again)
            await lost
            raise StoreError(f"the LISTEN connection to {self._masked} was lost")
        finally:
            self._conn = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def notify(self, channel: str, payloads: Sequence[str]) -> None:
        too_long = [p for p in payloads if len(p.encode()) > MAX_PAYLOAD]
        if too_long:
            raise StoreError(f"{len(too_long)} notifications longer than {MAX_PAYLOAD} bytes on {channel}")
        if not payloads:
            return
        try:
            await self._pool().execute(Q.notify_many, channel, list(payloads))
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"{self._masked}: cannot notify {channel}: {exc}") from exc
