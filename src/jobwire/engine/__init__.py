"""The engine: event → recorded run → dispatch → watch → status, with policies and reconcile."""

from jobwire.engine.engine import Engine
from jobwire.engine.errors import (
    Conflict,
    EngineError,
    Forbidden,
    InvalidParams,
    JobNotFound,
    RunNotFound,
    Unavailable,
)

__all__ = [
    "Conflict",
    "Engine",
    "EngineError",
    "Forbidden",
    "InvalidParams",
    "JobNotFound",
    "RunNotFound",
    "Unavailable",
]
