"""Named SQL queries, and small helpers every store shares (time columns, paging cursors).

Queries live in `.sql` files beside the package (`store/sql/<dialect>/*.sql`), procrastinate-style::

    -- name: insert_run
    -- An optional description: comment lines right after the name line are dropped.
    INSERT INTO runs (...) VALUES (...);

A file may hold any number of blocks; a name may appear once per dialect. Lines before the first
`-- name:` line are ignored (a file header).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

_NAME_LINE = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


class QueryError(LookupError):
    """A query file is malformed or a query name is unknown."""


def parse_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split `text` into its `-- name:` blocks. Raises QueryError on a repeated or empty block."""
    out: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []
    in_header = False

    def flush() -> None:
        if name is None:
            return
        sql = "\n".join(body).strip().rstrip(";").strip()
        if not sql:
            raise QueryError(f"{source}: query {name!r} has no SQL")
        out[name] = sql

    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _NAME_LINE.match(line.strip())
        if m:
            flush()
            name, body, in_header = m.group(1), [], True
            if name in out:
                raise QueryError(f"{source}, line {lineno}: query {name!r} is defined twice")
            continue
        if name is None:
            continue
        if in_header and line.lstrip().startswith("--"):
            continue
        in_header = False
        body.append(line)
    flush()
    return out


def _sql_dir(dialect: str) -> Traversable:
    return files("jobwire.store").joinpath("sql", dialect)


@cache
def load_queries(dialect: str) -> dict[str, str]:
    """All named queries of a dialect (every `*.sql` file directly in `store/sql/<dialect>/`)."""
    out: dict[str, str] = {}
    folder = _sql_dir(dialect)
    if not folder.is_dir():
        raise QueryError(f"no SQL folder for dialect {dialect!r}")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        for qname, sql in parse_queries(entry.read_text(encoding="utf-8"), entry.name).items():
            if qname in out:
                raise QueryError(f"{entry.name}: query {qname!r} is also defined in another file")
            out[qname] = sql
    return out


class Queries:
    """Attribute access to a dialect's named queries: `Q.insert_run`. Unknown names fail loudly."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        self._q = load_queries(dialect)

    def __getattr__(self, name: str) -> str:
        try:
            return self._q[name]
        except KeyError:
            raise QueryError(f"no query named {name!r} for {self._dialect}") from None

    def names(self) -> list[str]:
        return sorted(self._q)


_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """`(version, name, sql)` of every `store/sql/<dialect>/migrations/NNNN_name.sql`, in order.

    Versions must be 1, 2, 3, ... without gaps, so a missing or misnumbered file is an error."""
    folder = _sql_dir(dialect).joinpath("migrations")
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        if not entry.is_file() or not entry.name.endswith(".sql"):
            continue
        m = _MIGRATION_RE.match(entry.name)
        if not m:
            raise QueryError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise QueryError(f"migration {version:04d}_{name}.sql: expected version {expected:04d} next")
    return found


# --------------------------------------------------------------------------- time columns

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (a naive one is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // _US


def opt_us(dt: datetime | None) -> int | None:
    return None if dt is None else to_us(dt)


def from_us(us: int) -> datetime:
    """Inverse of `to_us`: an aware UTC datetime, exact to the microsecond."""
    return EPOCH + timedelta(microseconds=us)


def opt_dt(us: int | None) -> datetime | None:
    return None if us is None else EPOCH + timedelta(microseconds=us)


# --------------------------------------------------------------------------- paging cursors


class InvalidCursorError(ValueError):
    """A `cursor` that no page of this store handed out."""


def encode_cursor(sort_us: int, row_id: str) -> str:
    """Opaque keyset cursor: URL-safe base64 of the last row's sort key `(time, id)`."""
    return base64.urlsafe_b64encode(f"{sort_us}:{row_id}".encode()).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        us, sep, row_id = raw.partition(":")
        if not sep:
            raise ValueError("no separator")
        return int(us), row_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        msg = f"invalid cursor {cursor!r}: pass a next_cursor of a previous page"
        raise InvalidCursorError(msg) from None


def check_buckets(bucket: timedelta, buckets: int) -> int:
    """`Store.activity`'s bucket width in microseconds, after checking its arguments."""
    width = bucket // _US
    if width < 1:
        raise ValueError(f"bucket must be at least 1 microsecond, got {bucket}")
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    return width


def check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return limit
