"""The event loop a component was started in, without asking asyncio each time.

On CPython 3.11 every `asyncio.get_running_loop()` checks the process id with a `getpid` system
call. Components on the per-run path (the committer, the in-process launcher, the http target)
keep the loop they were started in and look it up here: that loop while it runs, else the running
one (not started yet, or started in a loop that has since ended, as a test may do).
"""

from __future__ import annotations

import asyncio

__all__ = ["current"]


def current(kept: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    if kept is not None and kept.is_running():
        return kept
    return asyncio.get_running_loop()
