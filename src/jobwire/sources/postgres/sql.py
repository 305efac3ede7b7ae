"""The SQL the `postgres` plug runs, built from identifiers only — no client library.

Names (table, columns, channel, function, trigger) are checked against a strict pattern and
double-quoted, so `"Jobs"` stays case-sensitive as written; values are always parameters (`$1`),
never formatted in. The trigger's `condition` is the one piece of operator SQL: it is placed only
inside `WHERE (...)` (see `spec.check_condition`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

SOURCE_APPLICATION = "jobwire-source"
SINK_APPLICATION = "jobwire-sink"
"""The `application_name`s of jobwire's connections (`pg_stat_activity`); the notifier ignores
their writes."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class BadIdentifier(ValueError):
    pass


def ident(name: str) -> str:
    """`name` double-quoted, after checking it is a plain identifier (letters, digits, `_`)."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise BadIdentifier(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


def table_ident(name: str) -> str:
    """`table` or `schema.table`, each part quoted."""
    return ".".join(ident(part) for part in name.split(".", 1))


def literal(text: str) -> str:
    """A SQL string literal (for DDL, where parameters are not allowed): quotes doubled, no
    backslash or NUL accepted (standard_conforming_strings is not assumed)."""
    if "\\" in text or "\0" in text:
        raise BadIdentifier(f"refusing to quote {text!r}")
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Columns:
    """What a trigger says about its table."""

    table: str
    condition: str
    id: str
    status: str
    type: str | None
    version: str | None
    run_id: str | None
    error: str | None
    key: str | None = None
    payload: str | None = None


def columns(trigger: Any) -> Columns:
    return Columns(
        table=trigger.table,
        condition=trigger.condition,
        id=trigger.id_column,
        status=trigger.status_column,
        type=trigger.type_column,
        version=trigger.version_column,
        run_id=trigger.run_id_column,
        error=trigger.error_column,
        key=trigger.key_column,
        payload=trigger.payload_column,
    )


def claim_sql(c: Columns, by_type: bool) -> str:
    """The waiting rows, oldest id first, locked for this transaction and skipped by the others:
    `$1` the batch size, `$2` (when `by_type`) the value of the type column."""
    where = f"({c.condition})"
    if by_type:
        assert c.type is not None
        where += f" AND {ident(c.type)} = $2"
    # names quoted by ident(), values are parameters, the condition is trusted operator input
    select = f"SELECT * FROM {table_ident(c.table)} WHERE {where} "  # noqa: S608
    return select + f"ORDER BY {ident(c.id)} LIMIT $1 FOR UPDATE SKIP LOCKED"


def mark_sql(c: Columns) -> str:
    """Write a claimed row's outcome: `$1` id, `$2` status, then run id and error if configured."""
    sets = [f"{ident(c.status)} = $2"]
    n = 2
    if c.run_id is not None:
        n += 1
        sets.append(f"{ident(c.run_id)} = ${n}")
    if c.error is not None:
        n += 1
        sets.append(f"{ident(c.error)} = ${n}")
    return f"UPDATE {table_ident(c.table)} SET {', '.join(sets)} WHERE {ident(c.id)} = $1"  # noqa: S608 - quoted names


def mark_args(c: Columns, row_id: Any, status: str, run_id: str | None, error: str | None) -> tuple[Any, ...]:
    args: list[Any] = [row_id, status]
    if c.run_id is not None:
        args.append(run_id)
    if c.error is not None:
        args.append(error)
    return tuple(args)


def status_sql(table: str, status: str, run_id: str, error: str | None) -> str:
    """The status sink's write: `$1` status, `$2` run id, `$3` the error (when `error` is a column)."""
    sets = f"{ident(status)} = $1"
    if error is not None:
        sets += f", {ident(error)} = $3"
    return f"UPDATE {table_ident(table)} SET {sets} WHERE {ident(run_id)} = $2"  # noqa: S608 - quoted names


def notifier_names(table: str) -> tuple[str, str]:
    """(function, trigger) for `table`: seed 001's `jobs_notifier` (in the table's schema) and a
    trigger of the same name on the table."""
    schema, _, name = table.rpartition(".")
    fn = f"{name}_notifier"
    if len(fn) > 63:  # pragma: no cover - TABLE_RE keeps names short enough
        raise BadIdentifier(f"table name too long for {fn!r}")
    return (f"{schema}.{fn}" if schema else fn), fn


def install_sql(table: str, channel: str) -> str:
    """Seed 001's notifier, on the table it means: a function that NOTIFYs the channel (given as
    the trigger's argument) and an AFTER INSERT OR UPDATE trigger. Idempotent: CREATE OR REPLACE
    the function, DROP TRIGGER IF EXISTS then CREATE TRIGGER, in one transaction.

    One statement-level notification with an empty payload: PostgreSQL folds equal notifications
    of one transaction into one, and the listener selects the waiting rows itself, so a row's id
    is not needed in the payload (and a NOTIFY payload cannot lose a row that the select finds).
    jobwire's own writes (the listener marking rows, the status sink) notify nobody: they never
    make a row wait, and waking every listener for each of them would double the selects."""
    fn, trig = notifier_names(table)
    fn_q = table_ident(fn)
    return (
        "BEGIN;\n"
        f"CREATE OR REPLACE FUNCTION {fn_q}() RETURNS trigger\n"
        "LANGUAGE plpgsql AS $jobwire$\n"
        "BEGIN\n"
        "    IF current_setting('application_name') NOT IN "
        f"({literal(SOURCE_APPLICATION)}, {literal(SINK_APPLICATION)}) THEN\n"
        "        PERFORM pg_notify(TG_ARGV[0], '');\n"
        "    END IF;\n"
        "    RETURN NULL;\n"
        "END\n"
        "$jobwire$;\n"
        f"DROP TRIGGER IF EXISTS {ident(trig)} ON {table_ident(table)};\n"
        f"CREATE TRIGGER {ident(trig)} AFTER INSERT OR UPDATE ON {table_ident(table)}\n"
        f"    FOR EACH STATEMENT EXECUTE FUNCTION {fn_q}({literal(channel)});\n"
        "COMMIT;\n"
    )
