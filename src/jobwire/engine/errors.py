"""What the engine raises to its callers, each with the HTTP answer the API maps it to.

A source (a broker consumer, a database listener) catches these by kind: `Unavailable` means the
event could not be recorded now (jobwire is stopping) — leave the message for a retry or another
replica; every other `EngineError` is an answer about the event itself (no such job, invalid
parameters, a duplicate delivery) and retrying the same message gets the same answer.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base for errors the API maps to HTTP answers. `status` is the HTTP code, `reason` a short word."""

    status = 400
    reason = "BadRequest"


class JobNotFound(EngineError):
    status = 404
    reason = "JobNotFound"


class RunNotFound(EngineError):
    status = 404
    reason = "RunNotFound"


class Conflict(EngineError):
    status = 409
    reason = "Conflict"


class InvalidParams(EngineError):
    status = 422
    reason = "InvalidParameters"


class ChainLoop(EngineError):
    """A job's `after` triggers would make a chain that comes back to where it started."""

    status = 422
    reason = "ChainLoop"


class Forbidden(EngineError):
    status = 403
    reason = "Forbidden"


class Unavailable(EngineError):
    status = 503
    reason = "ShuttingDown"


class NotLeader(EngineError):
    """A time-trigger fire handed in on a replica that does not hold the leader lease (any more):
    not recorded here — the leader fires it, or catches it up when it takes over."""

    status = 503
    reason = "NotLeader"


class LeaseUncertain(NotLeader):
    """A fire handed in while this replica's lease renewal is late: its own deadline for the lease
    passed, but it has not stepped down. The renewal may still succeed — then no replica takes
    over and catches up, so a fire dropped now would be missed by all: it is kept and retried."""

    reason = "LeaseUncertain"


__all__ = [
    "Conflict",
    "EngineError",
    "Forbidden",
    "InvalidParams",
    "JobNotFound",
    "LeaseUncertain",
    "NotLeader",
    "RunNotFound",
    "Unavailable",
]
