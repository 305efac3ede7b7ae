"""`StatusHub.unheard` is `not listening` followed by `skip`, in one call: in each case where
nobody would read a document it answers True and the change takes a sequence number; otherwise it
answers False and takes none."""

from __future__ import annotations

import time

from jobwire.engine.metrics import Metrics
from jobwire.engine.status import RESUME_WINDOW, StatusHub


def check(hub: StatusHub) -> None:
    before = hub.ring.last
    expected = not hub.listening
    assert hub.unheard() is expected
    assert hub.ring.last == before + (1 if expected else 0)


def test_unheard_agrees_with_listening_and_skips_only_then() -> None:
    hub = StatusHub([], Metrics(), wake_interval=0)
    check(hub)  # nobody ever read: unheard
    assert hub.unheard()
    hub._reader_opened()
    check(hub)  # a stream client reads
    assert not hub.unheard()
    hub._reader_closed()
    check(hub)  # it left just now: it may resume
    assert not hub.unheard()
    assert hub._idle_since is not None
    hub._idle_since -= RESUME_WINDOW + 1  # left longer ago than it may resume
    check(hub)
    assert hub.unheard()
    hub.relay = lambda doc: None  # other replicas read
    check(hub)
    assert not hub.unheard()
    hub.relay = None
    hub._idle_since = time.monotonic()
    check(hub)
