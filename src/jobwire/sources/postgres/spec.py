"""The `postgres` trigger and the `[postgres]` settings section — pure pydantic, no client library.

Seed 001: rows of a table (`jobs`) with a status and a type; a trigger on the table NOTIFYs a
channel (`job_scheduler`); the scheduler selects the pending rows and launches the job each row's
type names. Here: a job's `postgres` trigger launches that job for the rows whose type column
names it (or, with `type_column: null`, for every row its condition selects); with
`JOBWIRE_POSTGRES_DSN` set, jobwire also serves the table named in settings for every job, each
row naming its job in the type column.

Every name here (table, columns, channel) is an identifier checked against a strict pattern and
always double-quoted in SQL; row values are always query parameters. `condition` is the one
exception: a SQL boolean expression, **trusted operator input** like the job file itself, placed
only inside `WHERE (...)`. It is checked to be one self-contained expression (no `;`, comment,
`$` parameter or dollar quote, balanced parentheses and quotes), so it cannot end the statement or
the parenthesis it sits in; it is not a sandbox: it can call any function the connecting role may.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobwire.model import Duration, _Trigger
from jobwire.plug import SourcePlug

IDENT_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
"""A column or channel name: letters, digits and `_`, at most 63 (PostgreSQL's limit)."""
TABLE_RE = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,53}$"
"""A table, optionally schema-qualified; ≤ 54 characters so `<table>_notifier` fits in 63."""

Ident = Annotated[str, Field(pattern=IDENT_RE)]
TableName = Annotated[str, Field(pattern=TABLE_RE)]

DEFAULT_CONDITION = "status = 'pending'"
MAX_CONDITION = 2000


def check_condition(text: str) -> str:
    """A SQL boolean expression that can only ever be the inside of `WHERE (...)`: refuses `;`,
    comments, `$` (parameters and dollar quotes), unbalanced parentheses or quotes. Trusted input
    (the operator's), checked against mistakes and against escaping its parentheses, not parsed."""
    if not text.strip():
        raise ValueError("condition must not be empty")
    if len(text) > MAX_CONDITION:
        raise ValueError(f"condition longer than {MAX_CONDITION} characters")
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            end = i + 1
            while True:
                end = text.find(c, end)
                if end < 0:
                    raise ValueError(f"condition: unterminated {c} quote")
                if end + 1 < n and text[end + 1] == c:  # '' or "" inside the quotes
                    end += 2
                    continue
                break
            i = end + 1
            continue
        if c == ";":
            raise ValueError("condition: ';' is not allowed (one expression, not statements)")
        if c == "$":
            raise ValueError("condition: '$' is not allowed (no parameters or dollar quoting)")
        if text.startswith(("--", "/*", "*/"), i):
            raise ValueError("condition: SQL comments are not allowed")
        if c == "\\":
            raise ValueError("condition: backslashes are not allowed")
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ValueError("condition: ')' without its '('")
        i += 1
    if depth:
        raise ValueError("condition: '(' without its ')'")
    return text


class PostgresTrigger(_Trigger):
    """Run the job for each pending row of a PostgreSQL table (seed 001)."""

    type: Literal["postgres"] = "postgres"
    dsn: str | None = Field(default=None, repr=False)
    """`postgresql://user:password@host:5432/db`; default `JOBWIRE_POSTGRES_DSN`."""
    table: TableName = "jobs"
    channel: Ident = "job_scheduler"
    """The channel the table's trigger NOTIFYs (`jobwire db install-trigger` installs it)."""
    condition: str = DEFAULT_CONDITION
    """Which rows are waiting: a SQL expression placed inside `WHERE (...)` (trusted input)."""
    type_column: Ident | None = "type"
    """The column naming the row's job. On a job's trigger: rows whose value is `type_value`
    (default the job's name); null: every row the condition selects is for this job."""
    type_value: str | None = Field(default=None, max_length=1000)
    id_column: Ident = "id"
    """The primary key: the order rows are taken in and part of the event key."""
    version_column: Ident | None = None
    """A column that changes when a row is to run again (the event key is id + version)."""
    key_column: Ident | None = None
    """The event key from this column (an idempotency key the producer sets) instead of the
    primary key: rows with the same key make one run."""
    payload_column: Ident | None = None
    """The run's parameters from this one column (json, jsonb, or text holding JSON) instead of
    from every column of the row; text that is not JSON makes the row `failed` with the reason."""
    status_column: Ident = "status"
    run_id_column: Ident | None = None
    """Written with the run's id when the row is claimed; the status write-back needs it."""
    error_column: Ident | None = None
    """Written with the reason when a row makes no run (invalid: status `failed`)."""
    safety_interval: Duration = timedelta(seconds=30)
    """Select even without a notification this often (a lost NOTIFY loses no row)."""
    batch: int = Field(default=100, ge=1, le=10_000)
    """Rows claimed per transaction (the bound on work in flight)."""

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: str) -> str:
        return check_condition(v)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str | None) -> str | None:
        return None if v is None else _pg_url(v)

    @field_validator("safety_interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if v < timedelta(milliseconds=100):
            raise ValueError("safety_interval must be at least 100ms")
        return v


def _pg_url(url: str) -> str:
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"expected a postgresql:// URL, got {url.split('://')[0]!r}://…")
    return url


class PostgresSettings(BaseSettings):
    """`[postgres]` settings (`JOBWIRE_POSTGRES_*`). With a DSN set and `intake` on, jobwire serves
    `table` for every job: each row names its job in `type_column`."""

    model_config = SettingsConfigDict(env_prefix="JOBWIRE_POSTGRES_", extra="ignore")

    dsn: str | None = Field(default=None, repr=False)
    """`JOBWIRE_POSTGRES_DSN`: the database of every trigger without its own `dsn`, and of the
    table-wide intake. Seed 001 names no variable of its own."""
    intake: bool = True
    status: bool | None = None
    """Write each run's progress back to its row (tables with a run id column); default: on when
    a DSN is set."""
    table: TableName = "jobs"
    channel: Ident = "job_scheduler"
    condition: str = DEFAULT_CONDITION
    type_column: Ident = "type"
    id_column: Ident = "id"
    version_column: Ident | None = None
    key_column: Ident | None = None
    payload_column: Ident | None = None
    status_column: Ident = "status"
    run_id_column: Ident | None = None
    error_column: Ident | None = None
    safety_interval: Duration = timedelta(seconds=30)
    batch: int = Field(default=100, ge=1, le=10_000)

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: str) -> str:
        return check_condition(v)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str | None) -> str | None:
        return None if not v else _pg_url(v)


GLOBAL_TRIGGER_ID = "postgres"


def global_bindings(settings: Any) -> list[Any]:
    """Seed 001's table for every job: on when a DSN is set and the intake is not turned off."""
    from jobwire.sources.base import Binding

    if not isinstance(settings, PostgresSettings) or not settings.dsn or not settings.intake:
        return []
    fields = settings.model_dump(exclude={"intake", "status"})
    trigger = PostgresTrigger(id=GLOBAL_TRIGGER_ID, **fields)
    return [Binding(job=None, trigger_id=GLOBAL_TRIGGER_ID, trigger=trigger)]


PLUG: SourcePlug = SourcePlug(
    kind="postgres",
    trigger=PostgresTrigger,
    settings=PostgresSettings,
    load="jobwire.sources.postgres.source:build",
    extra="postgres",
    global_bindings=global_bindings,
    sink="jobwire.sources.postgres.status:build_sink",
)
