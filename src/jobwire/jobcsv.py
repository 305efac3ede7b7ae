"""Seed 004's job registry: a `jobs.csv` file, one job per row.

Columns (header row, any order; names are matched after stripping spaces):

    job_name, mqtt_topic, image, cpu_request, memory_request, gpu, disk_request,
    cpu_limit, memory_limit, disk_limit                       (seed 004's)
    namespace, command, args, env, cleanup                    (optional extras)

`job_name`, `mqtt_topic` and `image` must be in the header; the others may be left out. Every cell
is stripped of surrounding whitespace, and an empty cell means "not set". Blank rows and rows whose
first cell starts with `#` are skipped (comments); so are header cells left empty, while the cells
under them are. A record that breaks CSV's quoting is a bad row; the reader goes on after it.

Each row becomes this job (as in a job file):

    name: <job_name>
    triggers: [{type: mqtt, id: mqtt, topic: <mqtt_topic>, payload: raw}]
    parameters: [{name: payload, default: ""}]     # the message body, as JOBWIRE_PARAM_PAYLOAD
    target: {type: kubernetes, image: <image>, cpu_request: ..., gpu: ..., ...,
             cleanup_min: 0, cleanup_ttl: 1m}

`command` and `args` are a JSON array (`["sh", "-c", "echo hi"]`) or words split as a shell
would (`sh -c "echo hi"`); `env` is a JSON object or `NAME=value` pairs separated by `;`.
`cleanup` is `delete` (the default: finished Jobs are deleted by the first cleanup sweep at least a
minute after they finish), a duration (deleted that long after they finish) or `default`
(jobwire's general policy: `CLEANUP_MIN` newest kept, the others after 8 hours).

This module only parses: a bad row gives problems naming its line and column, and no job; the
other rows are unaffected. What to do with them (skip, report) is `jobfile`'s business.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from jobwire.model import NAME_RE, Job, parse_duration
from jobwire.params import check_definition
from jobwire.quantity import QuantityError, parse_quantity

__all__ = [
    "COLUMNS",
    "CSV_CLEANUP_TTL",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SEED_COLUMNS",
    "CsvProblem",
    "CsvRow",
    "parse_csv",
]

SEED_COLUMNS = (
    "job_name",
    "mqtt_topic",
    "image",
    "cpu_request",
    "memory_request",
    "gpu",
    "disk_request",
    "cpu_limit",
    "memory_limit",
    "disk_limit",
)
"""Seed 004's columns, in its order."""
OPTIONAL_COLUMNS = ("namespace", "command", "args", "env", "cleanup")
COLUMNS = (*SEED_COLUMNS, *OPTIONAL_COLUMNS)
REQUIRED_COLUMNS = ("job_name", "mqtt_topic", "image")
"""Columns the header must have, and cells every row must fill."""
QUANTITY_COLUMNS = (
    "cpu_request",
    "memory_request",
    "disk_request",
    "cpu_limit",
    "memory_limit",
    "disk_limit",
)
CSV_CLEANUP_TTL = timedelta(minutes=1)
"""`cleanup: delete` (the default): a finished Job is deleted by the first cleanup sweep once it
has been finished this long — long after its log was copied and its end recorded, which happen as
soon as the watch sees it finish."""
MAX_GPU = 1024


@dataclass(frozen=True)
class CsvProblem:
    """One problem in the file: `line` 1-based (None: the file), `column` a header name ("" when
    the problem is the row or the header itself)."""

    line: int | None
    column: str
    message: str
    job: str | None = None


@dataclass
class CsvRow:
    line: int
    """The line the row starts on (a quoted cell may span lines)."""
    name: str | None
    """The row's job_name when it is a valid job name (it counts for duplicates even when the row
    is bad)."""
    job: Job | None
    """None when the row has problems."""
    problems: list[CsvProblem] = field(default_factory=list)


def _records(text: str) -> Iterator[tuple[int, list[str] | str]]:
    """(first line, cells) of each record, or (first line, what is wrong with its CSV syntax);
    blank records and `#` comments left out. The reader goes on after a bad record."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    prev = 0
    while True:
        start = prev + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            prev = reader.line_num
            if "unexpected end of data" in str(exc):
                yield (
                    start,
                    (
                        f"CSV syntax error: a quoted cell is never closed, so lines {start}-{prev} "
                        "(the rest of the file) were read as this one row; close the '\"'"
                    ),
                )
            else:
                yield start, f"CSV syntax error: {exc} (inside a quoted cell, write a '\"' as '\"\"')"
            continue
        prev = reader.line_num
        if not any(c.strip() for c in cells) or cells[0].strip().startswith("#"):
            continue
        yield start, [c.strip() for c in cells]


def parse_csv(text: str) -> tuple[list[CsvRow], list[CsvProblem]]:
    """The rows of a jobs.csv text, each with its job or its problems, and the problems of the file
    itself (its header, CSV syntax). A file problem means no row can be trusted: no rows then."""
    text = text.removeprefix("\ufeff")  # a byte order mark, as spreadsheets save UTF-8
    records = _records(text)
    first = next(records, None)
    if first is None:
        return [], [CsvProblem(None, "", f"no header row: expected the columns {', '.join(SEED_COLUMNS)}")]
    header_line, header = first
    if isinstance(header, str):
        return [], [CsvProblem(header_line, "", f"the header row: {header}")]
    problems = _header_problems(header_line, header)
    if problems:
        return [], problems
    rows: list[CsvRow] = []
    for line, cells in records:
        if isinstance(cells, str):
            rows.append(CsvRow(line, None, None, [CsvProblem(line, "", cells)]))
        else:
            rows.append(_row(line, header, cells))
    return rows, []


def _header_problems(line: int, header: list[str]) -> list[CsvProblem]:
    problems: list[CsvProblem] = []
    seen: set[str] = set()
    for name in header:
        if not name:
            continue  # a spreadsheet's trailing empty column: fine while its cells are empty
        if name in seen:
            problems.append(CsvProblem(line, name, "this column appears twice in the header"))
        seen.add(name)
        if name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known columns: " + ", ".join(COLUMNS)
            problems.append(CsvProblem(line, name, f"unknown column {name!r} ({hint})"))
    for name in REQUIRED_COLUMNS:
        if name not in seen:
            problems.append(CsvProblem(line, name, "the header has no such column; it is required"))
    return problems


def _row(line: int, header: list[str], cells: list[str]) -> CsvRow:
    if len(cells) > len(header):
        extra = [c for c in cells[len(header) :] if c]
        if extra:
            return CsvRow(
                line,
                None,
                None,
                [
                    CsvProblem(
                        line,
                        "",
                        f"{len(cells)} cells but the header has {len(header)} columns "
                        "(quote a cell that contains ',')",
                    )
                ],
            )
    row = {name: (cells[i] if i < len(cells) else "") for i, name in enumerate(header)}
    name = row["job_name"] or None
    valid_name = name if name is not None and re.fullmatch(NAME_RE, name) else None
    problems: list[CsvProblem] = []

    def bad(column: str, message: str) -> None:
        problems.append(CsvProblem(line, column, message, valid_name))

    for i, column in enumerate(header):
        if not column and i < len(cells) and cells[i]:
            bad("", f"cell {i + 1} holds {cells[i][:40]!r} but its column has no name in the header")
    for column in REQUIRED_COLUMNS:
        if not row[column]:
            bad(column, "empty; every row needs a value here")
    if name is not None and valid_name is None:
        bad(
            "job_name",
            f"{name!r} is not a job name: 1 to 128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    target: dict[str, Any] = {"type": "kubernetes", "image": row["image"] or None}
    for column in QUANTITY_COLUMNS:
        value = row.get(column, "")
        if not value:
            continue
        try:
            parse_quantity(value)
        except QuantityError:
            if value.startswith("-"):
                bad(column, f"{value!r} is negative; a resource quantity cannot be")
            else:
                bad(column, f"{value!r} is not a Kubernetes quantity (such as 500m, 2, 1.5Gi, 512Mi or 10G)")
            continue
        target[column] = value
    gpu = row.get("gpu", "")
    if gpu:
        if re.fullmatch(r"\d{1,5}", gpu) and int(gpu) <= MAX_GPU:
            target["gpu"] = int(gpu)
        else:
            bad("gpu", f"{gpu!r} is not a number of GPUs: a whole number from 0 to {MAX_GPU}")
    if row.get("namespace"):
        target["namespace"] = row["namespace"]
    for column in ("command", "args"):
        if row.get(column):
            words = _words(row[column])
            if isinstance(words, str):
                bad(column, words)
            else:
                target[column] = words
    if row.get("env"):
        env = _env(row["env"])
        if isinstance(env, str):
            bad("env", env)
        else:
            target["env"] = env
    cleanup = _cleanup(row.get("cleanup", ""))
    if isinstance(cleanup, str):
        bad("cleanup", cleanup)
    else:
        target.update(cleanup)
    if problems:
        return CsvRow(line, valid_name, None, problems)
    data = {
        "name": name,
        "triggers": [{"type": "mqtt", "id": "mqtt", "topic": row["mqtt_topic"], "payload": "raw"}],
        "parameters": [{"name": "payload", "type": "string", "default": ""}],
        "target": target,
    }
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            column, message = _model_problem(e)
            bad(column, message)
        return CsvRow(line, valid_name, None, problems)
    for loc, message in check_definition(job):  # `{{placeholders}}` in command, args, env
        bad(_column_of(list(loc), message), message)
    return CsvRow(line, valid_name, None if problems else job, problems)


def _words(text: str) -> list[str] | str:
    """A JSON array of strings, or shell-like words; a string is what is wrong with it."""
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"starts with '[' but is not a JSON array: {exc}"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "a JSON array here must hold strings only"
        return value
    try:
        return shlex.split(text)
    except ValueError as exc:
        return f"cannot split {text!r} into words: {exc} (quote with \" or ', or write a JSON array)"


def _env(text: str) -> dict[str, str] | str:
    """A JSON object of strings, or `NAME=value; NAME2=value`."""
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"starts with '{{' but is not a JSON object: {exc}"
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return "a JSON object here must map names to strings"
        pairs = value
    else:
        pairs = {}
        for part in text.split(";"):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            if not sep:
                return f"{part.strip()!r} is not NAME=value (pairs are separated by ';')"
            pairs[key.strip()] = val.strip()
    for key in pairs:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            return f"{key!r} is not an environment variable name"
    return pairs


def _cleanup(text: str) -> dict[str, Any] | str:
    if text in ("", "delete"):
        return {"cleanup_min": 0, "cleanup_ttl": CSV_CLEANUP_TTL}
    if text == "default":
        return {}
    try:
        return {"cleanup_min": 0, "cleanup_ttl": parse_duration(text)}
    except ValueError as exc:
        return f"{text!r} is not delete, default or a duration: {exc}"


_TARGET_COLUMNS = {c: c for c in COLUMNS} | {"cleanup_ttl": "cleanup", "cleanup_min": "cleanup"}


def _model_problem(err: Any) -> tuple[str, str]:
    """A pydantic error of the job built from a row → (column, message)."""
    loc = [p for p in err["loc"] if p not in ("kubernetes", "mqtt")]
    message = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str) and len(value) <= 80 and repr(value) not in message:
        message = f"{value!r}: {message}"
    return _column_of(loc, message), message


def _column_of(loc: list[Any], message: str) -> str:
    if loc[:1] == ["name"]:
        return "job_name"
    if loc[:1] == ["triggers"]:
        return "mqtt_topic"
    if loc[:1] == ["target"] and len(loc) > 1 and str(loc[1]) in _TARGET_COLUMNS:
        return _TARGET_COLUMNS[str(loc[1])]
    # a check across fields (cpu_request more than cpu_limit): the first column it names
    named = [c for c in COLUMNS if re.search(rf"\b{c}\b", message)]
    return named[0] if named else ""
