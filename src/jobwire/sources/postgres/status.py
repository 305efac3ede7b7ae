"""The plug's `sink` hook: the status sink that writes run progress back to the rows, built only
when the settings turn it on (`JOBWIRE_POSTGRES_STATUS`, default on when `JOBWIRE_POSTGRES_DSN` is
set). Imports nothing of asyncpg unless it is on, so an install without the `postgres` extra is
not affected."""

from __future__ import annotations

import importlib.util
from typing import Any

import structlog

from jobwire.sources.postgres.spec import PostgresSettings

log = structlog.get_logger(__name__)


def build_sink(settings: Any) -> Any:
    if not isinstance(settings, PostgresSettings):
        return None
    enabled = settings.status if settings.status is not None else bool(settings.dsn)
    if not enabled:
        return None
    if importlib.util.find_spec("asyncpg") is None:
        log.error(
            "status sink cannot run",
            kind="postgres",
            error="the Python package 'asyncpg' is missing: pip install 'jobwire[postgres]'",
        )
        return None
    from jobwire.sources.postgres.sink import PostgresStatusSink
    from jobwire.sources.postgres.source import ROUTES

    return PostgresStatusSink(ROUTES)
