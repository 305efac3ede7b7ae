"""Kubernetes API errors → the run's `error` (seed 000's message, reason, code).

lightkube raises `lightkube.ApiError` (a `httpx2.HTTPStatusError`) carrying the API server's
`Status` object: its `reason`, `message` and `code` go into the run's error as they are. A watch
request refused outright surfaces as a plain `httpx2.HTTPStatusError`; network trouble as other
`httpx2.HTTPError`s.
"""

from __future__ import annotations

import httpx2
from lightkube import ApiError

from jobwire.model import RunError

__all__ = ["RETRYABLE_CODES", "api_code", "is_already_exists", "is_not_found", "retryable", "run_error"]

RETRYABLE_CODES = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Codes another attempt may get past (409 Conflict, not AlreadyExists: that one is adopted)."""


def api_code(exc: BaseException) -> int | None:
    if isinstance(exc, ApiError):
        code = exc.status.code if exc.status is not None else None
        return int(code) if code is not None else exc.response.status_code if exc.response else None
    if isinstance(exc, httpx2.HTTPStatusError):
        return exc.response.status_code
    return None


def is_not_found(exc: BaseException) -> bool:
    return api_code(exc) == 404


def is_already_exists(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status is not None and exc.status.reason == "AlreadyExists"


def retryable(exc: BaseException) -> bool:
    code = api_code(exc)
    if code is None:
        return True  # connection refused, reset, timeout: the API server may be back soon
    return code in RETRYABLE_CODES


def run_error(exc: BaseException, doing: str) -> RunError:
    """The error of a run whose API call failed; `doing` says which call ("create Job x")."""
    if isinstance(exc, ApiError) and exc.status is not None:
        st = exc.status
        return RunError(
            message=f"{doing}: {st.message or st.reason or 'error'}",
            reason=st.reason or "ApiError",
            code=st.code if st.code is not None else api_code(exc),
        )
    if isinstance(exc, httpx2.HTTPStatusError):
        text = exc.response.text[:200] if exc.response is not None else ""
        return RunError(
            message=f"{doing}: HTTP {exc.response.status_code} {text}".rstrip(),
            reason=exc.response.reason_phrase or "HTTPError",
            code=exc.response.status_code,
        )
    return RunError(
        message=f"{doing}: {type(exc).__name__}: {exc}".rstrip(": "),
        reason="KubernetesUnavailable",
    )
