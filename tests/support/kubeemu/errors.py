"""Kubernetes ``Status`` error objects."""

from __future__ import annotations

from typing import Any

REASON_BY_CODE: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error answered to the client as a ``kind: Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASON_BY_CODE.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.message, self.reason, self.details)


def status_object(
    code: int, message: str, reason: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        out["details"] = details
    out["code"] = code
    return out


def _group_kind(group: str, kind: str) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": kind}
    if group:
        d["group"] = group
    return d


def not_found(group: str, plural: str, name: str) -> ApiError:
    res = f"{plural}.{group}" if group else plural
    return ApiError(
        404, f'{res} "{name}" not found', "NotFound", {"name": name, **_group_kind(group, plural)}
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    res = f"{plural}.{group}" if group else plural
    return ApiError(
        409,
        f'{res} "{name}" already exists',
        "AlreadyExists",
        {"name": name, **_group_kind(group, plural)},
    )


def conflict(group: str, plural: str, name: str) -> ApiError:
    res = f"{plural}.{group}" if group else plural
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {res} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        "Conflict",
        {"name": name, **_group_kind(group, plural)},
    )


def invalid(group: str, kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """causes: (reason e.g. FieldValueInvalid, field path, message)."""
    parts = [f"{fld}: {msg}" for _, fld, msg in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return ApiError(
        422,
        f'{kind} "{name}" is invalid: {joined}',
        "Invalid",
        {
            "name": name,
            **_group_kind(group, kind),
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


def expired(message: str) -> ApiError:
    return ApiError(410, message, "Expired")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")
