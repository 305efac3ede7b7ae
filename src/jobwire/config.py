"""Settings: every one from a `JOBWIRE_` environment variable or the config file (`JOBWIRE_CONFIG`).

Defaults are the embedded mode: one process, SQLite under `./.jobwire/`, the API on loopback.
Each default says why it is what it is.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from jobwire.model import Duration

Scope = Literal["read", "write"]
MASK = "****"


class ApiToken(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: SecretStr
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read", "write"]))
    name: str = "token"


class WebhookSinkSpec(BaseModel):
    """POST every status document to `url`, signed with HMAC-SHA256 when a secret is set."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["webhook"] = "webhook"
    url: str
    secret_env: str | None = None
    secret: SecretStr | None = None
    timeout: Duration = timedelta(seconds=10)
    max_attempts: int = 5
    allow_private: bool = True
    """Sinks are configured by the operator, not by job authors: private addresses are allowed."""


class LogSinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["log"] = "log"


class MqttSinkSpec(BaseModel):
    """Publish every status document on an MQTT broker: a run's end (succeeded, failed, timed
    out, cancelled, interrupted) on `<prefix>/job_complete/<job>` (seed 004's topic), every other
    state on `<prefix>/status/<job>`. Also on without a `sinks` entry when `JOBWIRE_MQTT_URL` is
    set (see `JOBWIRE_MQTT_SINK`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["mqtt"] = "mqtt"
    url: str | None = Field(default=None, repr=False)
    """`mqtt://[user:password@]host[:port]` or `mqtts://…`; default `JOBWIRE_MQTT_URL`, else
    `mqtt://127.0.0.1:1883`."""
    prefix: str = "services/mqtt_job_listener"
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    max_attempts: int = Field(default=5, ge=1, le=1000)


class S3LogSinkSpec(BaseModel):
    """Seed 004's "log to S3": when a run ends, its log (what `GET /runs/{id}/log` serves) is
    written to `s3://<bucket>/<prefix>/<job>/<run_id>.log`. Endpoint, region and credentials come
    from the standard AWS chain (`AWS_ENDPOINT_URL[_S3]`, `AWS_REGION`, profile, instance role)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["s3log"] = "s3log"
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = "jobwire/logs"
    """Key prefix; empty for the bucket's top level."""
    max_attempts: int = Field(default=5, ge=1, le=1000)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """The most of one run's log uploaded; a longer log is cut there, with a note at its end."""


_SINK_TAGS = ("webhook", "log", "mqtt", "s3log")


def _sink_type(value: Any) -> str | None:
    """The sink's `type` (`webhook` when left out, as before); None for what is no known type."""
    kind = value.get("type", "webhook") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _SINK_TAGS else None


SinkSpec = Annotated[
    Annotated[WebhookSinkSpec, Tag("webhook")] | Annotated[LogSinkSpec, Tag("log")]
    | Annotated[MqttSinkSpec, Tag("mqtt")] | Annotated[S3LogSinkSpec, Tag("s3log")],
    Discriminator(
        _sink_type,
        custom_error_type="sink_type",
        custom_error_message=(
            "unknown sink type: `type` must be 'webhook' (with a `url`), 'log', 'mqtt' or 's3log'"
        ),
    ),
]


class S3Url(BaseModel):
    """A job file in S3 (`JOBWIRE_JOBS=s3://bucket/key`): seed 004's `jobs.csv` (a `.csv` key), or
    YAML. Read at start and re-read when its ETag changes (`jobwire.engine.s3jobs`)."""

    model_config = ConfigDict(frozen=True)
    bucket: str
    key: str

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return parse_s3_url(str(value))
        return value

    @model_serializer
    def _text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_url(value: Any) -> bool:
    """`s3://…`, also as a Path made of it (`Path("s3://b/k")` is `s3:/b/k`)."""
    return isinstance(value, str | Path) and str(value).startswith("s3:/")


def parse_s3_url(url: str) -> dict[str, str]:
    """`s3://bucket/key` (or the `s3:/bucket/key` a Path makes of it) → bucket and key."""
    rest = url.removeprefix("s3:").lstrip("/") if url.startswith("s3:/") else None
    bucket, _, key = (rest or "").partition("/")
    if rest is None or not bucket or not key or key.endswith("/"):
        raise ValueError(f"{url!r} is not an S3 object URL: expected s3://bucket/key")
    return {"bucket": bucket, "key": key}


def _plain_env(name: str, default: Any) -> Any:
    """A seed's un-prefixed variable (`NAMESPACE`, `CLEANUP_MIN`) as the default of a setting."""
    return os.environ.get(name) or default


def parse_tokens(value: Any) -> Any:
    """`JOBWIRE_API_TOKENS="s3cret:read,write;other:read"` → [ApiToken, ...]; lists pass through."""
    if isinstance(value, str):
        out = []
        for i, part in enumerate(p for p in value.split(";") if p.strip()):
            token, _, scopes = part.strip().partition(":")
            out.append(
                {
                    "token": token,
                    "scopes": [s.strip() for s in scopes.split(",") if s.strip()] or ["read", "write"],
                    "name": f"token{i + 1}",
                }
            )
        return out
    return value


def bind_addresses(host: str) -> list[str]:
    """The addresses a server binding `host` listens on, as asyncio's `create_server` (uvicorn's)
    finds them: `getaddrinfo` with AI_PASSIVE, every family; "" is every interface. Empty when the
    name does not resolve."""
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def is_loopback_address(address: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything else (0.0.0.0, ::, a name) is not."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOBWIRE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    config: Path | None = None
    """A YAML file whose keys are these settings (lower case); the environment overrides it."""
    host: str = "127.0.0.1"
    """Loopback by default: the API is reachable from this machine only until a token is set."""
    port: int = 8080
    data_dir: Path = Path(".jobwire")
    """Holds the SQLite file, its lock and the run logs."""
    database_url: str | None = None
    """Default `sqlite:///<data_dir>/jobwire.db`; `memory://` for throwaway runs;
    `postgresql://user:password@host:5432/db` for PostgreSQL (several replicas may share it)."""
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    """PostgreSQL: connections in the store's pool."""
    replica_id: str | None = Field(default=None, min_length=1, max_length=200)
    """This replica's id in the store's replica registry; default a fresh uuid at every start."""
    lease_seconds: float = Field(default=10.0, gt=0, le=3600)
    """The leader lease (docs/replicas.md): a leader that cannot renew it for this long is replaced;
    a new leader takes over within it (plus one renewal period)."""
    lease_renew_seconds: float = Field(default=3.0, gt=0, le=3600)
    """How often the leader renews its lease and every replica writes its heartbeat."""
    heartbeat_expiry_seconds: float = Field(default=10.0, gt=0, le=3600)
    """A replica whose heartbeat is older than this is dead: its active runs are taken over."""
    db_auto_migrate: bool = False
    """PostgreSQL: migrate an outdated schema at start (under an advisory lock) instead of refusing
    to start; otherwise run `jobwire db upgrade` first."""
    jobs: Annotated[list[Path | S3Url], NoDecode] = Field(default_factory=list)
    """Job definition files or folders (YAML, CSV), or `s3://bucket/key` of one file in S3.
    Comma-separated in the environment."""
    api_token: SecretStr | None = None
    """One token with read and write scopes. Required when `host` is not loopback."""
    api_tokens: Annotated[list[ApiToken], NoDecode] = Field(default_factory=list)
    """Several tokens with scopes: `tok1:read,write;tok2:read`."""
    public_url: str | None = None
    """How jobs reach this API for callbacks; default http://<host>:<port>."""
    http_allow_private: bool = False
    """HTTP targets may not call loopback/private/link-local addresses unless allowed (SSRF)."""
    log_level: str = "info"
    log_format: Literal["console", "json"] = "console"
    shutdown_grace: Duration = timedelta(seconds=10)
    """On SIGTERM, running local processes get this long before they are stopped and recorded interrupted."""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """FULL: a recorded run survives power loss, not just a crash. Group commit keeps it fast."""
    retention_interval: Duration = timedelta(minutes=1)
    """How often retention sweeps run (each sweep is cheap: indexed deletes)."""
    run_log_max_bytes: int = 1_048_576
    sinks: list[SinkSpec] = Field(default_factory=list)
    reload: bool = False
    """Reload job files when they change (development)."""
    role: Literal["all", "scheduler", "runner"] = "all"
    """`all`: one process records and runs (the default). `scheduler`: records runs and hands each
    to the runner fleet over RabbitMQ (`BROKER_URL`) instead of running it; `runner`: takes runs
    from that queue and executes them, with no store (docs/fleet.md)."""
    work_queue: str = Field(default="jobwire.work", pattern=r"^[A-Za-z0-9_.:-]{1,255}$")
    """The fleet's durable quorum work queue (scheduler → runners)."""
    results_queue: str = Field(default="jobwire.results", pattern=r"^[A-Za-z0-9_.:-]{1,255}$")
    """The fleet's durable quorum results queue (runners → scheduler): state changes and outcomes."""
    runner_slots: int = Field(default=64, ge=1, le=10_000)
    """Runs a runner executes at once: its prefetch on the work queue."""
    access_log: bool = False
    """One log line per API request; off by default — runs and events are already recorded."""
    record_ahead: float = Field(default=0.5, ge=0.0, le=60.0)
    """Seconds (`JOBWIRE_RECORD_AHEAD`): a time trigger's fire is recorded this long before its due
    time — its event and its run, `pending` until then — so that at the due time the job only has
    to start (docs/design.md, "Recorded ahead"). Jobs with a concurrency limit are decided at the due
    time instead. 0 records every fire at its due time."""
    max_running_attempts: int | None = Field(default=None, ge=1)
    """Attempts of one target kind running at once at most (`JOBWIRE_MAX_RUNNING_ATTEMPTS`); more
    wait, recorded `pending`, in the launch backlog (`engine/backlog.py`). Lowers a target's own
    limit (http: 200); None keeps the targets' own limits."""
    backlog_memory: int = Field(default=10_000, ge=4)
    """Runs of the launch backlog kept in memory at most, all target kinds together
    (`JOBWIRE_BACKLOG_MEMORY`); past it a waiting run is kept in the store only and read back,
    oldest first, once half of these have started (`engine/spill.py`). ~2 KB of memory each."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1 << 30)
    """Largest request body the API reads (1 MiB): trigger parameters, webhook payloads and job
    definitions are small; a larger body is answered 413 before it is read, not buffered."""
    header_timeout: Duration = timedelta(seconds=10)
    """A connection must send a complete request head within this long of opening (or of its
    previous response), and a request body may not pause longer; otherwise it is closed."""
    keepalive_timeout: Duration = timedelta(seconds=5)
    """An idle keep-alive connection is closed after this long without a new request."""
    max_connections: int | None = Field(default=None, ge=1)
    """Open HTTP connections at most; default half the open-file limit (raised to the hard limit
    at start), at most 8192. Over it, the oldest connection still waiting for its request head is
    closed to make room, or the new one is answered 503 when all are busy."""
    stream_buffer: int = Field(default=10_000, ge=1, le=10_000_000)
    """Recent status documents kept in the hub's ring for subscribers that fall behind; one
    further behind is told how many it missed (numbered by sequence number)."""
    stream_stall_timeout: Duration = timedelta(seconds=30)
    """A stream client whose connection accepts no data for this long is disconnected; it can
    resume with `Last-Event-ID`."""
    template_jobs: bool = False
    """Seed 000 without per-job definitions: a broker event naming a job that is not defined
    launches the Kubernetes Job template of that name in `NAMESPACE` (a job `origin: template` is
    defined for it); no such template records the event `invalid` (TemplateNotFound)."""
    kube_namespace: str = Field(default_factory=lambda: _plain_env("NAMESPACE", "default"))
    """Namespace of `kubernetes` jobs that name none. `JOBWIRE_KUBE_NAMESPACE` or the config file;
    otherwise seed 000's plain `NAMESPACE` variable; otherwise `default`."""
    kube_cleanup_min: int = Field(default_factory=lambda: _plain_env("CLEANUP_MIN", 3), ge=0)
    """Finished Jobs per job the cleanup always keeps: `JOBWIRE_KUBE_CLEANUP_MIN`, the config file,
    or seed 000's plain `CLEANUP_MIN` (default 3)."""
    kube_cleanup_ttl: Duration = timedelta(hours=8)
    """Finished Jobs (and their pods and config maps) older than this are deleted (seed 001: 8 hours)."""
    kube_cleanup_interval: Duration = timedelta(minutes=1)
    """How often the Kubernetes cleanup sweeps (one list of Jobs per namespace per sweep)."""
    kubeconfig: Path | None = None
    """Kubeconfig file; default `KUBECONFIG`, then the in-cluster service account, then ~/.kube/config."""
    kube_context: str | None = None
    """Context of the kubeconfig to use (default: its current context)."""

    @property
    def replica_margin(self) -> float:
        """Seconds before its lease's and its heartbeat's expiry at which a replica stops relying on
        them (engine/replicas.py): a fifth of the shorter one, at most 1 s."""
        return min(1.0, self.lease_seconds / 5, self.heartbeat_expiry_seconds / 5)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> Settings:
        """The renewal interval must leave the heartbeat and the lease alive between two renewals;
        otherwise every replica on PostgreSQL is declared dead (exit 75) seconds after it starts."""
        margin = self.replica_margin
        dead, lost = "every replica would be declared dead", "the leader would lose its lease"
        for name, seconds, what in (
            ("heartbeat_expiry_seconds", self.heartbeat_expiry_seconds, dead),
            ("lease_seconds", self.lease_seconds, lost),
        ):
            if self.lease_renew_seconds >= seconds - margin:
                raise ValueError(
                    f"lease_renew_seconds ({self.lease_renew_seconds:g}) must be shorter than {name} "
                    f"({seconds:g}) less a {margin:g} s margin, or {what} between two renewals: set "
                    f"JOBWIRE_LEASE_RENEW_SECONDS to a third of it or less (default 3 of 10)"
                )
        return self

    @field_validator("jobs", mode="before")
    @classmethod
    def _split_paths(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list):
            return [S3Url.model_validate(p) if is_s3_url(p) else p for p in v]
        return v

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        return parse_tokens(v)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        return check_database_url(v)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))

    # ---- derived
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jobwire.db'}"

    @property
    def effective_public_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/")

    @property
    def is_loopback(self) -> bool:
        """Whether every address a server binding `host` listens on is loopback: decided on what the
        name resolves to (every family), never on its text — `127.x.example` may well be 0.0.0.0."""
        addresses = bind_addresses(self.host)
        return bool(addresses) and all(is_loopback_address(a) for a in addresses)

    def all_tokens(self) -> list[ApiToken]:
        out = list(self.api_tokens)
        if self.api_token is not None:
            out.insert(0, ApiToken(token=self.api_token, scopes=["read", "write"], name="api_token"))
        return out

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets masked (for `jobwire config`)."""
        data = self.model_dump(mode="json")
        if self.api_token is not None:
            data["api_token"] = MASK
        data["api_tokens"] = [{"name": t.name, "token": MASK, "scopes": t.scopes} for t in self.api_tokens]
        for s in data.get("sinks", []):
            if s.get("secret"):
                s["secret"] = MASK
        data["database_url"] = _mask_url(self.effective_database_url)
        return data


DATABASE_SCHEMES = ("sqlite", "memory", "postgresql", "postgres")


def check_database_url(url: str | None) -> str | None:
    """Only the stores that exist: SQLite (`sqlite:///PATH`), PostgreSQL (`postgresql://…` or
    `postgres://…`) and `memory://`, so `config` and `serve` refuse anything else in one line before
    anything starts. The message never repeats the URL (it may hold a password)."""
    if url is None:
        return None
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme.startswith("postgresql+"):
        raise ValueError(
            f"unsupported database URL scheme {scheme!r} (a SQLAlchemy driver name): "
            "set JOBWIRE_DATABASE_URL to postgresql://user:password@host:5432/db"
        )
    if scheme not in DATABASE_SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}: "
            "set JOBWIRE_DATABASE_URL to sqlite:///PATH, postgresql://… or memory:// (or unset it)"
        )
    if scheme in ("postgresql", "postgres") and not url.split("://", 1)[-1].strip("/"):
        raise ValueError("a PostgreSQL URL needs a host or a database: postgresql://user:password@host:5432/db")
    return url


def settings_error_lines(exc: ValidationError) -> list[str]:
    """One plain line per problem: `name (JOBWIRE_NAME): message` — pydantic's "Value error, "
    prefix and the tags of union members left out."""
    lines = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"] if str(p) not in _SINK_TAGS]
        msg = str(e["msg"]).removeprefix("Value error, ")
        tags = [str(p) for p in e["loc"][1:] if str(p) in _SINK_TAGS]
        if e["type"] == "sink_type":
            kinds = "`type` must be 'webhook' (with a `url`), 'log', 'mqtt' or 's3log'"
            if isinstance(e["input"], dict):
                msg = f"unknown sink type {e['input'].get('type')!r}: {kinds}"
            else:
                msg = f"a sink is a mapping, got {e['input']!r}: {kinds}"
        elif e["type"] == "extra_forbidden" and loc[:1] == ["sinks"] and tags:
            specs: dict[str, type[BaseModel]] = {
                "webhook": WebhookSinkSpec, "log": LogSinkSpec, "mqtt": MqttSinkSpec,
                "s3log": S3LogSinkSpec,
            }
            keys = ", ".join(specs[tags[0]].model_fields)
            msg = f"a {tags[0]} sink has no setting {loc[-1]!r} (it has: {keys})"
        if not loc:
            lines.append(msg)
            continue
        env = f"JOBWIRE_{loc[0].upper()}"
        lines.append(f"{'.'.join(loc)} ({env}): {msg}")
    return lines


def _mask_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the file named by JOBWIRE_CONFIG (or `config=` given to Settings)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        import os

        path = self.current_state.get("config") or os.environ.get("JOBWIRE_CONFIG")
        if not path:
            return {}
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"config file {p} (JOBWIRE_CONFIG) does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {p}: expected a mapping of settings at the top level")
        return data
