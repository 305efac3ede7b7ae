"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.brokers import RABBIT, RabbitVhost, need


@pytest.fixture
def vhost() -> Iterator[RabbitVhost]:
    """A fresh RabbitMQ vhost for one test, deleted afterwards (fails, not skips, under CI=true)."""
    need(RABBIT, "RabbitMQ")
    v = RabbitVhost()
    try:
        yield v
    finally:
        v.delete()
