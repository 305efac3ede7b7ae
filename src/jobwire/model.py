"""The vocabulary of jobwire: jobs, triggers, targets, policies, events, runs, status.

Everything here is a value object. Definitions (jobs and what they contain) are
strict pydantic models (`extra="forbid"`) so a misspelt field is an error that
names its path, never a silently ignored key. Records (events, runs) are what
the store keeps and the API returns.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# --------------------------------------------------------------------------- helpers

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


MAX_DURATION = timedelta(days=3650)
"""Every duration (intervals, timeouts, backoffs, TTLs, windows) is at most ten years: far beyond
any schedule, and far below where `datetime + timedelta` overflows or a timer loops on it."""
MAX_SECONDS = int(MAX_DURATION.total_seconds())
_EXPECTED = "expected a duration such as 30s, 5m, 1h30m or a number of seconds"


def _bounded(seconds: float, shown: Any) -> timedelta:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{_EXPECTED}, got {shown!r}")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"at most {MAX_DURATION.days} days (10 years), got {shown!r}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {shown!r}")
    return timedelta(seconds=seconds)


_PARSED: dict[str, timedelta] = {}
"""`parse_duration` of a text, remembered (at most `_DurationTexts.LIMIT`): a definition has seven
durations, nearly all the same few texts (a stored one: "10s", "3600s", ...); parsing each took
64 % of validating a stored definition."""


def parse_duration(value: Any) -> timedelta:
    """Accept `90`, `1.5`, `"30s"`, `"1h30m"`, `"500ms"`, `"2d"` or a timedelta; at most
    `MAX_DURATION`, never NaN or infinite (a clear error, not an OverflowError later)."""
    if value.__class__ is str:
        known = _PARSED.get(value)
        if known is None:
            known = _parse_duration(value)  # raises ValueError: nothing remembered
            if len(_PARSED) < _DurationTexts.LIMIT:
                _PARSED[value] = known
        return known
    return _parse_duration(value)


def _parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return _bounded(value.total_seconds(), str(value))
    if isinstance(value, bool):
        raise ValueError(_EXPECTED)
    if isinstance(value, int | float):
        try:
            return _bounded(float(value), value)
        except OverflowError:  # an int too large for a float
            raise ValueError(f"at most {MAX_DURATION.days} days (10 years), got a larger number") from None
    if isinstance(value, str):
        text = value.strip().lower()
        if len(text) > 64:
            raise ValueError(f"{_EXPECTED}, got {len(text)} characters")
        if not text[-1:].isalpha():  # "30s" is not a number: no exception raised and caught first
            try:
                return _bounded(float(text), value)
            except ValueError as exc:
                if "at most" in str(exc) or "negative" in str(exc):
                    raise
        if _DURATION_RE.match(text):
            seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))
            return _bounded(seconds, value)
    raise ValueError(f"{_EXPECTED}, got {value!r}")


def format_duration(td: timedelta) -> str:
    secs = td.total_seconds()
    if secs == int(secs):
        return f"{int(secs)}s"
    return f"{secs}s"


class _DurationTexts(dict[timedelta, str]):
    """`format_duration` remembered per value. Its `__getitem__` is the serializer: a C method,
    so a dump calls into Python only for a duration it has not seen (a definition has seven;
    dumping 100,000 jobs took 15 µs each with a Python call per duration, 9 µs without)."""

    LIMIT = 4096

    def __missing__(self, td: timedelta) -> str:
        text = format_duration(td)
        if len(self) < self.LIMIT:
            self[td] = text
        return text


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),  # never negative (`_bounded`)
    PlainSerializer(_DurationTexts().__getitem__, return_type=str),
]


def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r} (expected an IANA name such as Europe/Amsterdam)"
        ) from exc
    return name


TimeZoneName = Annotated[str, AfterValidator(_check_zone)]


utcnow: Callable[[], datetime] = functools.partial(datetime.now, UTC)
"""The time now, in UTC: a `partial`, so a call is no Python-level frame (six a run)."""


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("a time needs a zone or offset, e.g. 2026-12-01T10:00:00Z")
    return value.astimezone(UTC)


AwareDatetime = Annotated[datetime, AfterValidator(_aware_utc)]

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
PARAM_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
JobName = Annotated[str, Field(pattern=NAME_RE, description="letters, digits, '_', '.', '-'; ≤128")]


class _Def(BaseModel):
    """Base for definitions: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- parameters


class ParamType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"
    json = "json"


class Parameter(_Def):
    """A declared input of a job. Event payloads and API bodies fill parameters, and only
    parameters reach the target (as env vars, argv elements or HTTP body fields)."""

    name: Annotated[str, Field(pattern=PARAM_RE)]
    type: ParamType = ParamType.string
    default: Any = None
    required: bool | None = None
    description: str = ""
    choices: list[Any] | None = None
    secret: bool = False
    """A secret parameter is masked in logs, events and API responses."""

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


# --------------------------------------------------------------------------- triggers


class _Trigger(_Def):
    type: str
    """The trigger's kind (each subclass narrows it to its literal)."""
    id: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = None
    """Stable identity of the trigger within its job; part of every run key it makes.
    Defaults to the trigger's type (with its index when a job has several of one type)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Fixed parameter values for runs made by this trigger (the payload cannot override them)."""


class CronTrigger(_Trigger):
    type: Literal["cron"] = "cron"
    cron: str
    timezone: TimeZoneName = "UTC"

    @field_validator("cron")
    @classmethod
    def _parse(cls, v: str) -> str:
        from jobwire.cron import CronExpr  # local: cron is a pure leaf module

        CronExpr.parse(v)
        return v


class IntervalTrigger(_Trigger):
    type: Literal["interval"] = "interval"
    interval: Duration
    start: AwareDatetime | None = None
    """Anchor of the grid of fire times (default: the Unix epoch), so restarts keep the phase."""

    @field_validator("interval")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v < timedelta(milliseconds=100):
            raise ValueError("interval must be at least 100ms")
        return v


class AtTrigger(_Trigger):
    type: Literal["at"] = "at"
    at: AwareDatetime


class ApiTrigger(_Trigger):
    type: Literal["api"] = "api"


class WebhookTrigger(_Trigger):
    type: Literal["webhook"] = "webhook"
    secret_env: str | None = None
    """Name of the environment variable holding the HMAC secret (preferred over `secret`)."""
    secret: str | None = Field(default=None, repr=False)
    tolerance: Duration = timedelta(minutes=5)
    """How far the signed timestamp may be from now; older deliveries are stale."""

    @model_validator(mode="after")
    def _needs_secret(self) -> WebhookTrigger:
        if not self.secret and not self.secret_env:
            raise ValueError("a webhook trigger needs `secret_env` (or `secret`) for its HMAC signature")
        return self


class AfterTrigger(_Trigger):
    """Run this job when a run of `job` ends (chaining inside one jobwire): its event is committed
    in the same transaction as that run's end, so a crash can neither lose nor double it."""

    type: Literal["after"] = "after"
    job: JobName
    """The parent job."""
    on: Literal["succeeded", "failed", "finished"] = "succeeded"
    """`succeeded`, `failed` (any end but success), or `finished` (any end)."""


Trigger = Annotated[
    Union[CronTrigger, IntervalTrigger, AtTrigger, ApiTrigger, WebhookTrigger, AfterTrigger],
    Field(discriminator="type"),
]
TIME_TRIGGERS = ("cron", "interval", "at")


@functools.cache  # once: every trigger written without `type` asks (100,000 jobs at start)
def _plug_kinds() -> tuple[str, ...]:
    from jobwire.registry import SOURCES

    return tuple(p.kind for p in SOURCES if p.trigger is not None)


def _infer_trigger_type(value: Any) -> Any:
    """`- cron: "* * * * *"` is shorthand for `- {type: cron, cron: ...}`; `- api` for `{type: api}`;
    `- after: build` for `{type: after, job: build}`."""
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, dict) and "type" not in value:
        for kind in ("cron", "interval", "at", "webhook", "api", "after", *_plug_kinds()):
            if kind in value:
                v = dict(value)
                if kind not in ("cron", "interval", "at") and isinstance(v[kind], dict | type(None)):
                    extra = v.pop(kind) or {}
                    v.update(extra)
                elif kind == "after" and isinstance(v[kind], str):  # `- after: parent-job`
                    v["job"] = v.pop(kind)
                v["type"] = kind
                return v
    return value


# --------------------------------------------------------------------------- targets


_ENV_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")
_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
"""A `{{name}}` placeholder, as `jobwire.params.PLACEHOLDER_RE` finds them."""


class LocalTarget(_Def):
    """A process on this machine. argv is executed directly; a shell only with `shell: true`,
    and then parameters reach it only as environment variables."""

    type: Literal["local"] = "local"
    command: list[str] | str
    shell: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    inherit_env: list[str] = Field(default_factory=list)
    """Variables of jobwire's own environment passed through by name (`NAME`, or `PREFIX_*`).
    Without them a process gets only PATH, HOME, USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ and
    TMPDIR from it: the operator's other variables (a sink's secret, cloud credentials) stay out."""
    cwd: str | None = None
    log_max_bytes: Annotated[int, Field(ge=1, le=1 << 30)] = 1_048_576
    kill_grace: Duration = timedelta(seconds=10)

    @field_validator("command")
    @classmethod
    def _program_is_fixed(cls, v: list[str] | str) -> list[str] | str:
        """Checked on the field, not with the job's other parameter rules, so that it is reported
        together with every other problem of the job (a model-level rule runs only once the
        rest of the model is valid)."""
        if isinstance(v, list) and v and _PLACEHOLDER.search(v[0]):
            raise PydanticCustomError(
                "program_from_parameter",
                "the program (command[0]) cannot come from a parameter; pass parameters as arguments",
            )
        return v

    @field_validator("inherit_env")
    @classmethod
    def _inherit_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _ENV_PATTERN.fullmatch(name):
                raise ValueError(f"{name!r} is not a variable name (NAME or PREFIX_*)")
            if name.upper().startswith("JOBWIRE_"):
                raise ValueError(f"{name!r}: jobwire's own JOBWIRE_* settings are never passed to jobs")
        return v

    @model_validator(mode="after")
    def _shape(self) -> LocalTarget:
        if self.shell:
            if not isinstance(self.command, str):
                raise ValueError("with shell: true, command must be one string")
            if "{{" in self.command:
                raise ValueError(
                    "with shell: true, parameters cannot be templated into the command; "
                    "read them from the environment (JOBWIRE_PARAM_<NAME>) instead"
                )
        elif isinstance(self.command, str) or not self.command:
            raise ValueError("command must be a non-empty list of arguments (or set shell: true)")
        return self


HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")


class HttpTarget(_Def):
    """One HTTP call per run, with `Idempotency-Key: <run id>`."""

    type: Literal["http"] = "http"
    url: str
    method: str = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    payload: Any = None
    timeout: Duration = timedelta(seconds=30)
    accept_status: list[int | str] = Field(default_factory=lambda: list[int | str](["2xx"]))
    """Status codes that count as success: numbers or classes such as `2xx`."""
    allow_private: bool = False
    """Allow loopback/private/link-local destinations (refused by default: SSRF)."""

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.upper()
            if v not in HTTP_METHODS:
                raise ValueError(f"method must be one of {', '.join(HTTP_METHODS)}")
        return v

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http:// or https:// URL")
        return v

    @field_validator("accept_status")
    @classmethod
    def _status(cls, v: list[int | str]) -> list[int | str]:
        for s in v:
            if isinstance(s, str) and not re.fullmatch(r"[1-5]xx", s):
                raise ValueError(f"accept_status entries are codes or classes like 2xx, got {s!r}")
        return v


def _quantity(value: Any) -> Any:
    if value is None:
        return None
    from jobwire.quantity import format_quantity  # local: a pure leaf module

    return format_quantity(value)


Quantity = Annotated[str, BeforeValidator(_quantity)]
"""A Kubernetes resource quantity (`500m`, `2`, `1.5Gi`), checked when the job is defined."""

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
_TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
KUBE_RESERVED_PREFIX = "jobwire.io/"


class KubernetesTarget(_Def):
    """A Kubernetes Job per run attempt, in one of two forms:

    * `template: NAME` — copied from a CronJob's `jobTemplate` (a suspended CronJob is the usual
      way to keep one) or a suspended Job labelled `jobwire.io/template: "true"`, named NAME in
      the namespace; the run's parameters are added to its containers' environment;
    * the short spec — `image` plus `command`/`args`/`env` and requests/limits (seed 004's
      columns: `gpu` becomes `nvidia.com/gpu`, `disk_*` `ephemeral-storage`).
    """

    type: Literal["kubernetes"] = "kubernetes"
    namespace: Annotated[str, Field(pattern=_DNS_LABEL)] | None = None
    """Default: the `kube_namespace` setting (`NAMESPACE`)."""
    template: Annotated[str, Field(pattern=_DNS_SUBDOMAIN)] | None = None
    image: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    """Environment of the container(s); values may use `{{param}}`."""
    cpu_request: Quantity | None = None
    memory_request: Quantity | None = None
    gpu: Annotated[int, Field(ge=0, le=1024)] | None = None
    disk_request: Quantity | None = None
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    disk_limit: Quantity | None = None
    service_account: Annotated[str, Field(pattern=_DNS_SUBDOMAIN)] | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str | int | None]] = Field(default_factory=list)
    """As in a pod spec: `key`, `operator`, `value`, `effect`, `tolerationSeconds`."""
    backoff_limit: Annotated[int, Field(ge=0, le=1000)] | None = None
    """Pod retries inside one attempt. Default 0 for the short spec (jobwire's `retry` policy makes
    new attempts instead, each visible as its own Job); a template keeps its own unless set."""
    active_deadline_seconds: Annotated[int, Field(ge=1, le=MAX_SECONDS)] | None = None
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=MAX_SECONDS)] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    cleanup_min: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    """Finished Jobs of this job always kept by the cleanup (default: `kube_cleanup_min`, `CLEANUP_MIN`)."""
    cleanup_ttl: Duration | None = None
    """Finished Jobs older than this are deleted with their pods (default: `kube_cleanup_ttl`, 8h)."""
    image_pull_grace: Duration = timedelta(minutes=5)
    """How long a pod may wait on its image (ImagePullBackOff/ErrImagePull) before the attempt fails.
    5 minutes: the kubelet's pull back-off reaches its 5 minute cap by then, so a registry hiccup
    has had several tries while a misspelt image does not hold a run for hours."""

    @model_validator(mode="after")
    def _shape(self) -> KubernetesTarget:
        if (self.template is None) == (self.image is None):
            raise ValueError("set exactly one of `template` (a Job template in the namespace) or `image`")
        if self.template is not None:
            short = [
                f
                for f in (
                    "command", "args", "cpu_request", "memory_request", "gpu", "disk_request",
                    "cpu_limit", "memory_limit", "disk_limit", "service_account",
                )
                if getattr(self, f) is not None
            ] + [f for f in ("node_selector", "tolerations") if getattr(self, f)]
            if short:
                raise ValueError(
                    f"with `template`, the pod spec comes from the template; remove {', '.join(short)}"
                )
        elif not self.image or not self.image.strip():
            raise ValueError("`image` must not be empty")
        from jobwire.quantity import parse_quantity

        for res in ("cpu", "memory", "disk"):
            req, lim = getattr(self, f"{res}_request"), getattr(self, f"{res}_limit")
            if req is not None and lim is not None and parse_quantity(req) > parse_quantity(lim):
                raise ValueError(f"{res}_request ({req}) must not be more than {res}_limit ({lim})")
        for i, tol in enumerate(self.tolerations):
            unknown = set(tol) - _TOLERATION_KEYS
            if unknown:
                raise ValueError(
                    f"tolerations[{i}]: unknown field(s) {sorted(unknown)} "
                    f"(expected {', '.join(sorted(_TOLERATION_KEYS))})"
                )
        for where in ("labels", "annotations"):
            for key in getattr(self, where):
                if key.startswith(KUBE_RESERVED_PREFIX):
                    raise ValueError(f"{where}: keys starting with {KUBE_RESERVED_PREFIX} are set by jobwire")
        return self


class SpotTarget(_Def):
    """A Docker container on an EC2 spot instance per run attempt (seed 002): requested at the run's
    time, terminated when the container calls back (or the run ends any other way). Unset fields
    take the `JOBWIRE_SPOT_*` settings (`jobwire.targets.spot.settings`)."""

    type: Literal["spot"] = "spot"
    image: Annotated[str, Field(min_length=1, max_length=1024)]
    command: list[str] | None = None
    """Arguments after the image in `docker run` (the image's own command by default)."""
    env: dict[str, str] = Field(default_factory=dict)
    """The container's environment; values may use `{{param}}`."""
    instance_types: list[str] = Field(default_factory=list)
    """Tried in turn when one has no spot capacity; default `JOBWIRE_SPOT_INSTANCE_TYPES`."""
    max_price: str | None = None
    ami: str | None = None
    ami_parameter: str | None = None
    """An SSM parameter holding the AMI id (e.g. /aws/service/ecs/optimized-ami/...)."""
    subnet_id: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    key_name: str | None = None
    instance_profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    max_requests: Annotated[int, Field(ge=1, le=100)] | None = None
    """Spot requests made per attempt at most (the first and the repeats after a cancelled,
    closed, price-too-low or no-capacity request); default `JOBWIRE_SPOT_MAX_REQUESTS`."""

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return v


TargetSpec = Annotated[
    Union[LocalTarget, HttpTarget, KubernetesTarget, SpotTarget], Field(discriminator="type")
]


# --------------------------------------------------------------------------- policies


class ConcurrencyPolicy(StrEnum):
    allow = "allow"
    forbid = "forbid"
    queue = "queue"
    replace_ = "replace"  # trailing _: `replace` would shadow str.replace


class Concurrency(_Def):
    """What happens when a run is due while others of the same job (and key) are running."""

    policy: ConcurrencyPolicy = ConcurrencyPolicy.allow
    max_running: Annotated[int, Field(ge=1, le=100_000)] | None = None
    """Limit for forbid/queue/replace (default 1); with `allow` a set limit queues the excess."""
    key: str | None = None
    """A parameter name: the limit then applies per value of that parameter."""

    @property
    def limit(self) -> int | None:
        if self.policy == ConcurrencyPolicy.allow:
            return self.max_running
        return self.max_running or 1


class CallbackPolicy(_Def):
    """What `POST /runs/{id}/callback` does for this job's runs (every target alike): `ok: false`
    fails the run at once with the job's message (the target's work is stopped); `ok: true` is
    recorded, and the run ends when the target's work ends — unless `wait` is set: then a run whose
    work ended well stays `running` until the job calls back (or `timeout` passes: failed,
    `CallbackTimeout`)."""

    wait: bool = False
    timeout: Duration = timedelta(hours=1)


class Retry(_Def):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 1
    backoff: Duration = timedelta(seconds=1)
    max_backoff: Duration = timedelta(minutes=5)
    multiplier: Annotated[float, Field(ge=1, le=100)] = 2.0
    jitter: Annotated[float, Field(ge=0, le=1)] = 0.2
    """Fraction of the delay added or removed at random, so retries of many runs spread out."""


class CatchupPolicy(StrEnum):
    skip = "skip"
    latest = "latest"
    all = "all"


class Catchup(_Def):
    """Fire times missed while jobwire was down. Default `latest` within 1h: a nightly job
    missed by a short outage still runs once, a week-old backlog does not flood the target."""

    policy: CatchupPolicy = CatchupPolicy.latest
    window: Duration = timedelta(hours=1)
    max: Annotated[int, Field(ge=1, le=100_000)] = 100


class Retention(_Def):
    """Both hold: the newest `keep` runs are always kept; older runs are deleted once past `ttl`."""

    keep: Annotated[int, Field(ge=0, le=10_000_000)] = 20
    ttl: Duration = timedelta(days=7)


class Job(_Def):
    name: JobName
    description: str = ""
    triggers: list[Annotated[AnyTrigger, BeforeValidator(_infer_trigger_type)]] = Field(default_factory=list)
    target: TargetSpec
    parameters: list[Parameter] = Field(default_factory=list)
    concurrency: Concurrency = Concurrency()
    retry: Retry = Retry()
    callback: CallbackPolicy = CallbackPolicy()
    timeout: Duration | None = None
    catchup: Catchup = Catchup()
    retention: Retention = Retention()
    paused: bool = False
    environment: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Job:
        names = [p.name for p in self.parameters]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"parameter names must be unique: {sorted(dup)}")
        ids = [t.id for t in self.triggers if t.id]
        if len(ids) != len(set(ids)):
            raise ValueError("trigger ids must be unique within a job")
        if self.concurrency.key and self.concurrency.key not in names:
            raise ValueError(f"concurrency.key {self.concurrency.key!r} is not a declared parameter")
        return self

    def trigger_ids(self) -> list[str]:
        """The effective id of each trigger, in order (see `_Trigger.id`)."""
        counts: dict[str, int] = {}
        for t in self.triggers:
            counts[t.type] = counts.get(t.type, 0) + 1
        seen: dict[str, int] = {}
        out = []
        for t in self.triggers:
            if t.id:
                out.append(t.id)
                continue
            seen[t.type] = seen.get(t.type, 0) + 1
            out.append(t.type if counts[t.type] == 1 else f"{t.type}-{seen[t.type]}")
        return out

    def trigger(self, trigger_id: str) -> Any | None:
        if not self.triggers:  # a job run only over the API or by hand: no ids to work out
            return None
        for tid, t in zip(self.trigger_ids(), self.triggers, strict=True):
            if tid == trigger_id:
                return t
        return None

    def param(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


# --------------------------------------------------------------------------- records


class FastValue(StrEnum):
    """A `StrEnum` whose `value` is read without a Python-level call. pydantic-core serialises an
    enum member through its `value`, which `enum` makes a Python property (two calls a read); a
    run's row and answer read ~7 of them. `attrgetter` reads the same `_value_` in C."""


# set after the class: in its body, mypy would take the property for a member
setattr(FastValue, "value", property(attrgetter("_value_")))  # noqa: B010


class EventOutcome(FastValue):
    """Lineage: what an event made, or why it made nothing."""

    run = "run"
    duplicate = "duplicate"  # its run key already had a run (`run_id` points at it)
    overlap = "overlap"  # concurrency policy forbid: skipped
    filtered = "filtered"  # the trigger's filter did not match
    invalid = "invalid"  # bad payload / parameters / unknown job
    paused = "paused"  # the job was paused


class FastFields(BaseModel):
    """A model whose fields are assigned in one Python-level call: BaseModel's `__setattr__` looks
    up a handler, then calls it (two calls, ~9 a run on `Run` and `Event`); this does what that
    handler does for a field of a model that is neither frozen nor validated on assignment
    (`tests/unit/test_trusted_models.py` compares the two)."""

    _field_names: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._field_names = frozenset(cls.model_fields)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._field_names:
            self.__dict__[name] = value
            self.__pydantic_fields_set__.add(name)
        else:
            super().__setattr__(name, value)


class Event(FastFields):
    id: str
    job: str | None
    trigger: str
    source: str
    """The kind of source: cron, interval, at, api, webhook, amqp, sqs, s3, mqtt, postgres, after, rerun."""
    received_at: datetime
    scheduled_at: datetime | None = None
    payload: Any = None
    outcome: EventOutcome = EventOutcome.run
    run_id: str | None = None
    reason: str | None = None
    input_location: str | None = None

    @classmethod
    def received(
        cls,
        id: str,
        job: str | None,
        trigger: str,
        source: str,
        received_at: datetime,
        scheduled_at: datetime | None,
        input_location: str | None,
        payload: Any = None,
        run_id: str | None = None,
    ) -> Event:
        """`Event(...)` with these fields, as the intake makes it from an `Incoming` (validated
        already): `trusted`, no second validation. `payload` and `run_id` count as given when not
        None (as if assigned after)."""
        fields = {
            "id": id,
            "job": job,
            "trigger": trigger,
            "source": source,
            "received_at": received_at,
            "scheduled_at": scheduled_at,
            "payload": payload,
            "outcome": EventOutcome.run,
            "run_id": run_id,
            "reason": None,
            "input_location": input_location,
        }
        given = {*_EVENT_GIVEN}
        if payload is not None:
            given.add("payload")
        if run_id is not None:
            given.add("run_id")
        return trusted(cls, fields, given)


_EVENT_GIVEN = ("id", "job", "trigger", "source", "received_at", "scheduled_at", "input_location")


class RunState(FastValue):
    queued = "queued"  # recorded, waiting for a concurrency slot
    pending = "pending"  # recorded, about to be dispatched (or waiting for a retry)
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"
    interrupted = "interrupted"  # jobwire stopped while it ran and could not hand it over

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {RunState.succeeded, RunState.failed, RunState.timed_out, RunState.cancelled, RunState.interrupted}
)
ACTIVE_STATES = frozenset({RunState.pending, RunState.running})


class RunError(BaseModel):
    """Seed 000's `error` block."""

    message: str
    reason: str | None = None
    code: int | str | None = None


_setattr = object.__setattr__
ModelT = TypeVar("ModelT", bound=BaseModel)


_new = object.__new__
# BaseModel's slots, set through their descriptors: `object.__setattr__` looks each name up first
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def trusted(cls: type[ModelT], fields: dict[str, Any], fields_set: set[str] | None = None) -> ModelT:
    """A model made from `fields`, a value for every one of its fields that the engine made itself
    (typed, never from outside): no validation, as `model_construct`, but without its per-field
    walk through aliases and defaults (a transition 2.4 → 1.0 µs, `timeit`; three a run; the slots
    set through their descriptors, 1.67 → 1.34 µs with the dict's making, eight a run)."""
    m = _new(cls)
    _setattr(m, "__dict__", fields)
    _set_fields_set(m, set(fields) if fields_set is None else fields_set)
    _set_extra(m, None)
    _set_private(m, None)
    return m


class Transition(BaseModel):
    state: RunState
    at: datetime
    reason: str | None = None
    attempt: int = 1

    @classmethod
    def made(cls, state: RunState, at: datetime, reason: str | None, attempt: int) -> Transition:
        """A transition the engine makes (`trusted`)."""
        return trusted(cls, {"state": state, "at": at, "reason": reason, "attempt": attempt})


class Run(FastFields):
    id: str
    key: str
    job: str
    trigger: str
    event_id: str
    state: RunState
    attempt: int = 1
    params: dict[str, Any] = Field(default_factory=dict)
    concurrency_key: str | None = None
    created_at: datetime
    scheduled_at: datetime | None = None
    not_before: datetime | None = None
    """For a pending run waiting for its next attempt: not to be started before this time."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    http_status: int | None = None
    error: RunError | None = None
    target_ref: str | None = None
    """The target-side name: process id, Kubernetes Job name, instance id."""
    target_status: dict[str, Any] = Field(default_factory=dict)
    history: list[Transition] = Field(default_factory=list)
    input_location: str | None = None
    environment: str | None = None

    @classmethod
    def recorded(
        cls,
        id: str,
        key: str,
        job: str,
        trigger: str,
        event_id: str,
        state: RunState,
        params: dict[str, Any],
        concurrency_key: str | None,
        created_at: datetime,
        scheduled_at: datetime | None,
        input_location: str | None,
        environment: str | None,
        history: list[Transition],
    ) -> Run:
        """`Run(...)` with these fields, as the intake makes a run from an `Incoming` (validated
        already) and its job's resolved parameters: `trusted`, no second validation (~3 µs)."""
        fields = {
            "id": id,
            "key": key,
            "job": job,
            "trigger": trigger,
            "event_id": event_id,
            "state": state,
            "attempt": 1,
            "params": params,
            "concurrency_key": concurrency_key,
            "created_at": created_at,
            "scheduled_at": scheduled_at,
            "not_before": None,
            "started_at": None,
            "finished_at": None,
            "exit_code": None,
            "http_status": None,
            "error": None,
            "target_ref": None,
            "target_status": {},
            "history": history,
            "input_location": input_location,
            "environment": environment,
        }
        return trusted(cls, fields, {*_RUN_GIVEN})

    def snapshot(self) -> Run:
        """A copy that the run's later changes cannot touch, ~10× cheaper than a deep copy: the
        engine only appends to `history` and replaces the other fields (transitions, errors and
        statuses are never mutated in place), so copying the containers is enough. Made as
        `model_copy(update=...)` would, without its generic path (`trusted`)."""
        d = self.__dict__
        fields = {
            **d,
            "history": list(d["history"]),
            "params": dict(d["params"]),
            "target_status": dict(d["target_status"]),
        }
        done = {"history", "params", "target_status"}
        return trusted(Run, fields, self.__pydantic_fields_set__ | done)


_RUN_GIVEN = (
    "id", "key", "job", "trigger", "event_id", "state", "params", "concurrency_key", "created_at",
    "scheduled_at", "input_location", "environment", "history",
)

_MADE_KEY = re.compile(r"/k([0-9a-f]{11})[0-9a-f]{12}")
"""The end of an event key jobwire made (`engine/intake.new_id`): the clock's µs first, 11 of 13
hex digits (its 256 µs steps)."""
_TIME_KEY = re.compile(r"/(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})Z")
"""The end of a time trigger's run key (`time_run_key`): its fire time."""
_EPOCH_NAIVE = datetime(1970, 1, 1)
_STEP = timedelta(microseconds=256)


def run_id_for(key: str) -> str:
    """A run's id is a pure function of its key, so every replica and every retry after a crash
    names the same run the same way (and so does the target: Job name, Idempotency-Key).

    `r` and 23 hex digits of the key's SHA-256 (92 bits). When the key carries a time jobwire put
    there — a fire time (`time_run_key`), an event key jobwire made (`new_id`) — that time comes
    first, as 11 hex digits in steps of 256 µs (35 characters in all): the runs recorded together
    then sit side by side in the index of run ids, where a wholly hashed id put each run of a
    group commit on a page of its own, and every page a commit touches is written and synced
    (docs/performance.md, "Session 17"). The whole hash still follows, so two keys of one time
    (10,000 jobs due at once) are as unlikely to share an id as before."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:23]
    end = len(key)
    made = _MADE_KEY.fullmatch(key, end - 25) if end >= 25 else None
    if made is not None:
        return f"r{made.group(1)}{digest}"
    fire = _TIME_KEY.fullmatch(key, end - 28) if end >= 28 else None
    if fire is not None:
        steps = (datetime.fromisoformat(fire.group(1)) - _EPOCH_NAIVE) // _STEP
        if 0 <= steps < 16**11:
            return f"r{steps:011x}{digest}"
    return "r" + digest


def time_run_key(job: str, trigger: str, scheduled_at: datetime) -> str:
    return f"{job}/{trigger}/{scheduled_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def event_run_key(job: str, trigger: str, event_key: str) -> str:
    return f"{job}/{trigger}/{event_key}"


# --------------------------------------------------------------------------- status


class StatusBlock(BaseModel):
    """Seed 000's `status`: Kubernetes JobStatus fields, filled in for every target."""

    active: int = 0
    completionTime: datetime | None = None  # noqa: N815 - seed 000's field names
    startTime: datetime | None = None  # noqa: N815
    failed: int = 0
    succeeded: int = 0


class StatusDocument(BaseModel):
    """One status message for every sink, in the shape of seed 000's message plus correlation."""

    name: str
    input_location: str | None = None
    action: str
    status: StatusBlock
    environment: str | None = None
    error: RunError | None = None
    run_id: str
    event_id: str
    job: str
    attempt: int
    time: datetime


# --------------------------------------------------------------------------- intake


class Incoming(BaseModel):
    """What a source hands to the engine: one occurrence of one trigger.

    `event_key` identifies the occurrence for deduplication (a webhook delivery id, a broker
    message id, an Idempotency-Key); time triggers leave it empty and set `scheduled_at`.
    """

    job: str | None
    trigger: str
    source: str
    payload: Any = None
    params: dict[str, Any] | None = None
    """Parameters given explicitly (API body); otherwise they come from `payload` if it is an object."""
    event_key: str | None = None
    scheduled_at: datetime | None = None
    input_location: str | None = None
    """Seed 000's field of the status document; default the `input_location` parameter."""
    environment: str | None = None
    """Seed 000's field of the status document; default the `environment` parameter, then the job's."""
    problem: str | None = None
    """Set by a source for a message it could not read (not JSON, no job named): the event is
    recorded `invalid` with this reason, so the source dead-letters the message."""
    received_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def manual(cls, job: str, source: str, params: dict[str, Any], event_key: str | None) -> Incoming:
        """`Incoming(job=, trigger=source, source=, params=, event_key=)`: a run asked for by name
        (API, CLI), whose values are typed already — `trusted`, no validation pass (~1.2 µs)."""
        fields = {
            "job": job,
            "trigger": source,
            "source": source,
            "payload": None,
            "params": params,
            "event_key": event_key,
            "scheduled_at": None,
            "input_location": None,
            "environment": None,
            "problem": None,
            "received_at": utcnow(),
        }
        return trusted(cls, fields, {"job", "trigger", "source", "params", "event_key"})


class Admission(BaseModel):
    """The answer to an Incoming once it is durably recorded: its event, and the run it made
    (for a duplicate: the run that already existed)."""

    event: Event
    run: Run | None = None

    @classmethod
    def of(cls, event: Event, run: Run | None) -> Admission:
        """`Admission(event=…, run=…)` of the engine's own models (`trusted`: no validation)."""
        return trusted(cls, {"event": event, "run": run})

    @property
    def created(self) -> bool:
        return self.event.outcome == EventOutcome.run


# --------------------------------------------------------------------------- plug triggers
# Source kinds add their trigger models (`jobwire/registry.py`); their spec modules import the
# bases above, so the registry is imported here, at the end, and the job model completed after.
from jobwire.registry import plug_triggers  # noqa: E402

if TYPE_CHECKING:
    AnyTrigger = _Trigger
else:
    _BUILTIN_TRIGGERS = (CronTrigger, IntervalTrigger, AtTrigger, ApiTrigger, WebhookTrigger, AfterTrigger)
    AnyTrigger = Annotated[Union[(*_BUILTIN_TRIGGERS, *plug_triggers())], Field(discriminator="type")]
Job.model_rebuild()
