"""Undo what `jobwire serve` does to logging when a test runs it in-process (CliRunner): its
handler writes to the runner's captured stderr, which is closed afterwards, so a later log record
in the same worker would print '--- Logging error ---' into another test's captured output."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
