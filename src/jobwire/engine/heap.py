"""The process heap after startup: what startup built lives as long as the process.

Startup builds the job definitions, compiled schedules and imported modules (100,000 jobs: millions
of objects). `Engine.start` turns the cyclic GC off while it builds them — otherwise every
generation-2 pass rescans the growing graph (4× the start's time) — and then calls `settle()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

YOUNG_THRESHOLD = 10_000
"""Allocations (net of frees) between collections of the cyclic GC's youngest generation; CPython's
default is 700. Every tenth young pass is a middle one and every tenth of those may be a full one:
while runs are in flight everything they hold is young or middle-aged and scanned again and again.
10,000 concurrent Kubernetes runs with the default: 26 full passes of up to 338 ms each (5.6 s of the
burst's ~41 s of CPU, and the loop stalled meanwhile); with 10,000: none, 0.9 s of GC in all."""


def settle() -> None:
    """Move everything alive out of the cyclic GC's reach, so a full collection scans only what
    runs allocate (with 10,000 jobs a generation-2 pass otherwise stalls the loop for tens of ms),
    and hand the memory that startup used and freed back to the OS (glibc keeps it: ~45 MB after
    100,000 jobs). No collection first: it would scan every object built (1.5 s with 100,000 jobs)
    to find the little cyclic garbage a start makes, which is kept. Then the young generation's
    threshold is raised (`YOUNG_THRESHOLD`; a higher one set before is kept)."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    _malloc_trim()


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)
