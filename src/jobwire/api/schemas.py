"""Request and response models of the HTTP API, the one error shape, and secret masking of jobs.

Every error the API returns, whatever raised it, has the shape of `ErrorBody`:
`{"error": {"message", "reason", "code", "details": [{"path", "message"}, ...]}}`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobwire.model import Event, Job, Run
from jobwire.redact import mask_url

MASK = "****"
"""What a secret looks like in every API response."""

_SECRET_WORDS = ("token", "secret", "password", "passwd", "authorization", "api_key", "apikey", "cookie")


def looks_secret(key: str) -> bool:
    """A header or environment variable whose name says it holds a credential."""
    k = key.lower().replace("-", "_")
    return any(w in k for w in _SECRET_WORDS)


# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"path": "job.callback_url", "message": "Field required"}}
    )

    path: str
    """Dotted path of the offending field (`job.callback_url`, `query.limit`, `params.count`)."""
    message: str
    line: int | None = None
    """For job definitions read from a file: the line of the offending field."""
    source: str | None = None


class ErrorInfo(BaseModel):
    message: str
    reason: str
    """A short word a program can switch on: JobNotFound, Conflict, InvalidParameters, Unauthorized, ..."""
    code: int
    """The HTTP status."""
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(BaseModel):
    error: ErrorInfo


class ApiError(Exception):
    """Raised by route code; answered in the `ErrorBody` shape."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or []
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.reason, self.message, self.details)


def error_body(
    status: int, reason: str, message: str, details: list[ErrorDetail] | None = None
) -> dict[str, Any]:
    info = ErrorInfo(message=message, reason=reason, code=status, details=details or [])
    return ErrorBody(error=info).model_dump(mode="json", exclude_none=True)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Malformed request: the body is not valid JSON, or a header is malformed"),
        (401, "No or unknown bearer token"),
        (403, "The token lacks the scope this endpoint needs"),
        (404, "Not found"),
        (409, "Conflict with the current state"),
        (413, "The request body is larger than JOBWIRE_MAX_BODY_BYTES"),
        (422, "Invalid request: `details` names each field and what was expected"),
    )
}


# --------------------------------------------------------------------------- jobs


class Seed003Call(BaseModel):
    callback_url: str
    http_method: str
    payload: Any = None


class Seed003Job(BaseModel):
    """A job in seed 003's form (`GET /jobs/{name}?format=seed003`): accepted back as it is by
    `POST`/`PUT /jobs`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    schedule: str
    job: Seed003Call


class JobOut(BaseModel):
    """A job as the API shows it: its full definition (secrets masked) plus where it came from."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str = ""
    origin: str
    """`api`, or `file:<path>` for jobs defined in files (edit the file to change those)."""
    paused: bool
    updated_at: datetime | None = None
    triggers: list[dict[str, Any]] = Field(default_factory=list)
    target: dict[str, Any] = Field(default_factory=dict)
    parameters: list[dict[str, Any]] = Field(default_factory=list)


class JobList(BaseModel):
    items: list[JobOut]


def mask_job(job: Job) -> dict[str, Any]:
    """The definition as JSON with every secret replaced by `****`: webhook secrets, defaults of
    secret parameters, fixed trigger values of secret parameters, credential-like headers and env."""
    data = job.model_dump(mode="json")
    secret_params = {p.name for p in job.parameters if p.secret}
    for p in data.get("parameters", []):
        if p.get("name") in secret_params and p.get("default") is not None:
            p["default"] = MASK
    for t in data.get("triggers", []):
        if t.get("secret"):
            t["secret"] = MASK
        for k, v in list(t.items()):  # a broker URL's password: `amqp://user:****@host`
            if isinstance(v, str) and v != (masked := mask_url(v)):
                t[k] = masked
        fixed = t.get("params") or {}
        for k in list(fixed):
            if k in secret_params:
                fixed[k] = MASK
    target = data.get("target") or {}
    for block in ("headers", "env"):
        values = target.get(block)
        if isinstance(values, dict):
            for k in list(values):
                if looks_secret(k):
                    values[k] = MASK
    for k, v in list(target.items()):  # URLs: `user:****@host`, `?token=****`
        if isinstance(v, str) and v != (masked := mask_url(v)):
            target[k] = masked
    return data


def unmask_job(data: dict[str, Any], current: Job | None) -> dict[str, Any]:
    """Undo `mask_job` for a definition sent back to us (GET, edit, PUT): a `****` left in place
    of a secret means "keep the secret the job has now", never "set the secret to ****"."""
    if current is None:
        return data
    old = current.model_dump(mode="json")
    old_params = {p["name"]: p for p in old.get("parameters", [])}
    for p in _dicts(data.get("parameters")):
        prev = old_params.get(p.get("name", ""))
        if p.get("default") == MASK and prev is not None:
            p["default"] = prev.get("default")
    old_triggers = dict(zip(current.trigger_ids(), old.get("triggers", []), strict=True))
    new_triggers = _dicts(data.get("triggers"))
    for i, t in enumerate(new_triggers):
        prev = old_triggers.get(str(t.get("id") or "")) or (
            old.get("triggers", [])[i] if i < len(old.get("triggers", [])) else None
        )
        if prev is None or prev.get("type") != t.get("type", prev.get("type")):
            continue
        if t.get("secret") == MASK:
            t["secret"] = prev.get("secret")
        for k, v in list(t.items()):  # a URL sent back masked as shown: keep the real one
            prev_v = prev.get(k)
            if isinstance(v, str) and isinstance(prev_v, str) and v != prev_v and v == mask_url(prev_v):
                t[k] = prev_v
        fixed = t.get("params")
        if isinstance(fixed, dict):
            for k, v in list(fixed.items()):
                if v == MASK and k in (prev.get("params") or {}):
                    fixed[k] = prev["params"][k]
    target, old_target = data.get("target"), old.get("target") or {}
    if isinstance(target, dict):
        for k, v in list(target.items()):  # a URL sent back masked as shown: keep the real one
            prev_v = old_target.get(k)
            if isinstance(v, str) and isinstance(prev_v, str) and v != prev_v and v == mask_url(prev_v):
                target[k] = prev_v
        for block in ("headers", "env"):
            values, prev_values = target.get(block), old_target.get(block) or {}
            if isinstance(values, dict):
                for k, v in list(values.items()):
                    if v == MASK and k in prev_values:
                        values[k] = prev_values[k]
    return data


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --------------------------------------------------------------------------- runs and events


class RunPage(BaseModel):
    items: list[Run]
    next_cursor: str | None = None
    """Pass as `cursor` to get the next (older) page; null on the last page."""


class EventPage(BaseModel):
    items: list[Event]
    next_cursor: str | None = None


class Lineage(BaseModel):
    """What one event made: its run(s), or why it made none."""

    event: Event
    runs: list[Run] = Field(default_factory=list)
    reason: str | None = None
    """Why the event made no run of its own (duplicate, overlap, filtered, invalid, paused)."""


class CallbackIn(BaseModel):
    """A job reporting its own end (authenticated by the run's callback token)."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    message: str | None = None
    data: dict[str, Any] | None = None


class Health(BaseModel):
    status: str


class TaskState(BaseModel):
    """One supervised background task of the engine."""

    task: str
    critical: bool = Field(description="the engine cannot take work while this task is failing")
    state: str = Field(description="running | failing | stopped")
    restarts: int
    consecutive_failures: int
    last_error: str | None = None
    failing_since: float | None = Field(None, description="Unix time of the first failure in a row")
    retry_in: float | None = Field(None, description="seconds waited before the latest restart")


class StoreWrites(BaseModel):
    """Whether the store takes writes (a full disk does not), and time-trigger fires waiting for it."""

    failing: bool
    failing_since: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    fires_pending: int = Field(0, description="time-trigger fires kept to be recorded when writes succeed")
    triggers_catching_up: int = Field(0, description="triggers with more missed fires than are kept")


class LaunchBacklogState(BaseModel):
    """Runs of one target kind: attempts running against its limit, and recorded runs waiting."""

    limit: int
    running: int
    waiting: int = Field(description="recorded `pending` runs waiting for a place (no task)")
    in_memory: int = Field(
        0, description="of those, held in memory (at most `JOBWIRE_BACKLOG_MEMORY`, all kinds)"
    )
    in_store: int = Field(0, description="of those, kept in the store only and read back as places free")
    read_error: str | None = Field(
        None, description="why reading them back from the store failed, while it is tried again"
    )
    waiting_since: float | None = Field(None, description="Unix time the current backlog started")
    most_waiting: int = Field(0, description="the most runs waiting at once in the current backlog")


class SourceState(BaseModel):
    """One event source (a broker connection): connected or not, and what it has received."""

    source: str
    kind: str
    connected: bool
    since: float | None = Field(None, description="Unix time of the last connect or disconnect")
    target: str = Field("", description="where it consumes from (secrets masked)")
    messages: int = 0
    dead_lettered: int = 0
    last_message_at: float | None = None
    lag: int | None = Field(None, description="messages waiting at the broker, when it says")
    last_error: str | None = None


class ReplicaRowState(BaseModel):
    """A replica in the store's registry (docs/replicas.md), as of this replica's last heartbeat."""

    id: str
    role: str
    alive: bool = Field(description="its heartbeat has not expired")
    host: str = ""
    pid: int = 0
    started_at: str
    last_heartbeat: str
    expires_at: str


class ReplicaState(BaseModel):
    """This replica: its id and role, whether it leads (and its lease's fencing token), its last
    heartbeat, and every replica of the store."""

    id: str
    role: str
    leader: bool
    lease_token: int | None = None
    lease_expires_at: str | None = None
    leader_id: str | None = Field(None, description="the replica holding the leader lease, as last seen")
    last_heartbeat: float | None = Field(None, description="epoch seconds")
    runs_taken_over: int = 0
    replicas: list[ReplicaRowState] = Field(default_factory=list)


class Readiness(Health):
    """`ready`, or `not ready` and why: starting, stopping, a critical task or store writes failing."""

    problems: list[str] = Field(default_factory=list)
    tasks: list[TaskState] = Field(default_factory=list)
    store: StoreWrites | None = None
    sources: list[SourceState] = Field(
        default_factory=list, description="event sources; a disconnected one reconnects with backoff"
    )
    launch_backlog: dict[str, LaunchBacklogState] = Field(
        default_factory=dict, description="by target kind with a launch limit: running and waiting runs"
    )
    replica: ReplicaState | None = None
