"""Job definitions from YAML files (and API bodies), with errors that name file, line and field.

A file holds `jobs: [...]`, or one job mapping, or a YAML stream of documents each holding one
of those. Every error of every file is collected (a bad job never hides the next one), and each
is reported as `file:line: path: message`, e.g.

    examples/bad.yaml:7: jobs[0].triggers[0].cron: cron '61 * * * *': minute field '61' is out of range 0-59

Loading is safe: only plain YAML data (mappings, sequences, strings, numbers, booleans, null,
timestamps); tags that would construct Python objects are refused. `${VAR}` is not expanded:
secrets are passed by name (`secret_env`), never written into a file.

Seed 003's job form (`{"name", "description", "schedule", "job": {"callback_url", "http_method",
"payload"}}`) is accepted wherever a job is, and converted to a cron trigger + http target.

Seed 004's registry, a `.csv` file (one job per row, see `jobwire.jobcsv`), is accepted wherever a
job file is, and folders hold `*.csv` files beside `*.yaml`. Unlike a YAML file, a CSV file with a
bad row still loads: the row is *skipped* — reported as `jobs.csv:7: column cpu_request: ...` by
`jobwire check` (an error there) and in the log of `jobwire serve`, and left out of the jobs in
force — while the other rows work. A row whose job name is already taken (by an earlier row or a
job of a YAML file, which always wins) is skipped the same way, naming both places. A problem of the
file itself (its header, unreadable, not UTF-8) is an error as for a YAML file.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from jobwire import yamlfast
from jobwire.model import NAME_RE, PARAM_RE, Job
from jobwire.params import Loc, check_definition
from jobwire.registry import job_problems

__all__ = [
    "SEED003_JOB_KEYS",
    "SEED003_KEYS",
    "DefinitionError",
    "JobFileError",
    "check_files",
    "check_paths",
    "format_loc",
    "from_seed003",
    "is_seed003",
    "load_path",
    "load_paths",
    "load_text",
    "parse_job",
    "seed003_obstacles",
    "to_seed003",
    "unset_secret_text",
    "unset_webhook_secrets",
]

MAX_NODES = 200_000
"""Upper bound on values built from one file, aliases and merge keys expanded (alias bombs)."""

MAX_TEXT = 16 * 1024 * 1024
"""Upper bound on the characters of all strings built from one file, aliases expanded: 200,000
aliases of one 1 MB string would otherwise make 200 GB of job definition from a small file."""

MAX_DEPTH = 100
"""Nesting deeper than this is refused (PyYAML composes recursively: 100,000 `[` exhausted the stack)."""

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Job files larger than this are refused unread: split the jobs into several files in a folder."""

SEED003_KEYS = ("name", "description", "schedule", "job")
SEED003_JOB_KEYS = ("callback_url", "http_method", "payload")


@dataclass(frozen=True)
class DefinitionError:
    """One problem in one job definition."""

    source: str
    """The file (as given), or "api"."""
    line: int | None
    """1-based line in `source`, when known."""
    path: str
    """Where in the document: `jobs[1].target.url` (empty for the document itself)."""
    message: str
    job: str | None = None
    """The name of the job the problem is in, when the definition has one."""

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text} (job {self.job!r})" if self.job else text


class JobFileError(Exception):
    """One or more definition errors; str() gives one per line."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def format_loc(loc: Iterable[str | int]) -> str:
    """("jobs", 0, "target", "url") → "jobs[0].target.url"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


# --------------------------------------------------------------------------- YAML with lines

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")
)


class _YamlProblemError(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class _Doc:
    data: Any
    lines: dict[Loc, int]
    line: int


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses nesting deeper than `MAX_DEPTH` before recursing into it."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise _YamlProblemError(
                    mark.line + 1,
                    f"nested deeper than {MAX_DEPTH} levels (column {mark.column + 1}): flatten the data",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


@dataclass
class _Budget:
    """What one file has built so far, aliases expanded: bounded by MAX_NODES and MAX_TEXT."""

    nodes: int = 0
    text: int = 0

    def spend(self, node: yaml.Node, nodes: int = 1) -> None:
        self.nodes += nodes
        if isinstance(node, yaml.ScalarNode):
            self.text += len(node.value)
        if self.nodes > MAX_NODES or self.text > MAX_TEXT:
            what = f"{MAX_NODES:,} values" if self.nodes > MAX_NODES else f"{MAX_TEXT:,} characters"
            raise _YamlProblemError(
                node.start_mark.line + 1,
                f"too large once aliases and merge keys are expanded (more than {what}): "
                "write the data out instead of repeating anchors",
            )


def _merged_size(node: yaml.MappingNode, memo: dict[int, int]) -> int:
    """Entries of `node` once its `<<` merge keys are flattened, without flattening (which would
    build every entry first: nested merges double at each level)."""
    size = memo.get(id(node))
    if size is not None:
        return size
    memo[id(node)] = 0  # a merge cycle adds nothing (PyYAML refuses it later)
    size = 0
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE_TAG:
            size += 1
            continue
        merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        size += sum(_merged_size(m, memo) for m in merged if isinstance(m, yaml.MappingNode))
        if size > MAX_NODES:
            break
    memo[id(node)] = size
    return size


class _Builder:
    """Builds plain Python data from a composed node tree, remembering the line of every value."""

    def __init__(self, loader: yaml.SafeLoader, budget: _Budget | None = None) -> None:
        self.loader = loader
        self.lines: dict[Loc, int] = {}
        self.budget = budget or _Budget()
        self.active: set[int] = set()
        self.problems: list[tuple[Loc, int, str]] = []

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.budget.spend(node)
        line = node.start_mark.line + 1
        self.lines.setdefault(loc, line)
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SCALAR_TAGS:
                raise _YamlProblemError(
                    line, f"tag {node.tag!r} is not allowed: job files hold plain data only"
                )
            return self.loader.construct_object(node, deep=True)
        if id(node) in self.active:
            raise _YamlProblemError(line, "recursive alias")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ_TAG:
                    raise _YamlProblemError(
                        line, f"tag {node.tag!r} is not allowed: job files hold plain data only"
                    )
                return [self.build(child, (*loc, i)) for i, child in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc, line)
            raise _YamlProblemError(line, f"unexpected YAML node {type(node).__name__}")
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc, line: int) -> dict[Any, Any]:
        if node.tag != _MAP_TAG:
            raise _YamlProblemError(line, f"tag {node.tag!r} is not allowed: job files hold plain data only")
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                key_line = key_node.start_mark.line + 1
                if key_node.value in seen:
                    self.problems.append(
                        (
                            (*loc, key_node.value),
                            key_line,
                            f"duplicate key {key_node.value!r} (first at line {seen[key_node.value]})",
                        )
                    )
                else:
                    seen[key_node.value] = key_line
        if any(k.tag == _MERGE_TAG for k, _ in node.value):
            self.budget.spend(node, _merged_size(node, {}))  # before flattening builds the entries
        self.loader.flatten_mapping(node)  # `<<: *anchor` merge keys; explicit keys come last and win
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise _YamlProblemError(key_line, "mapping keys must be plain scalars")
            if key_node.tag not in _SCALAR_TAGS:
                raise _YamlProblemError(
                    key_line, f"tag {key_node.tag!r} is not allowed: job files hold plain data only"
                )
            self.budget.spend(key_node, 0)
            key = self.loader.construct_object(key_node, deep=True)
            child: Loc = (*loc, key)
            self.lines[child] = key_line
            out[key] = self.build(value_node, child)
        return out


_INDENT_PROBLEMS = (
    "expected <block end>",
    "did not find expected key",
    "did not find expected '-' indicator",
    "mapping values are not allowed here",
)
"""What PyYAML says when a line is indented more or less than its siblings."""


def _yaml_error(exc: yaml.YAMLError) -> _YamlProblemError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        message = "YAML syntax error: " + ", ".join(parts)
        if mark is not None:
            message += f" (column {mark.column + 1})"
            text = mark.buffer or ""
            lines = text.split("\n") if isinstance(text, str) else []
            bad = lines[mark.line] if mark.line < len(lines) else ""
            if ":" in bad and bad.split(":", 1)[1].strip().startswith(("*", "@", "`", "%")):
                message += "; quote values that start with '*', '@', '`' or '%', e.g. cron: \"*/5 * * * *\""
            elif "\t" in (exc.problem or "") or "'\\t'" in (exc.problem or ""):
                message += f"; line {mark.line + 1} is indented with a tab: YAML indents with spaces only"
            elif any(p in (exc.problem or "") + (exc.context or "") for p in _INDENT_PROBLEMS):
                message += (
                    f"; check the indentation of line {mark.line + 1}: the keys of one mapping, and the "
                    "items of one list, must start in the same column as the ones above"
                )
                if "mapping values" in (exc.problem or ""):
                    message += " (or quote a value that contains ': ')"
            return _YamlProblemError(mark.line + 1, message)
        return _YamlProblemError(None, message)
    return _YamlProblemError(None, f"YAML error: {exc}")


def _reader_error(exc: yaml.reader.ReaderError, text: str) -> _YamlProblemError:
    """A character YAML does not allow (NUL, other control characters): where it is."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
    return _YamlProblemError(
        line,
        f"character U+{char:04X} (column {column}) is not allowed in a YAML file: remove it "
        "(a job file is text; write control characters as escapes in a double-quoted string)",
    )


def _compose(text: str, source: str) -> tuple[list[_Doc], list[DefinitionError]]:
    docs: list[_Doc] = []
    errors: list[DefinitionError] = []
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        problem = _reader_error(exc, text)
        return docs, [DefinitionError(source, problem.line, "", problem.message)]
    budget = _Budget()
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            builder = _Builder(loader, budget)
            data = builder.build(node, ())
            for loc, line, message in builder.problems:
                errors.append(DefinitionError(source, line, format_loc(loc), message))
            docs.append(_Doc(data, builder.lines, node.start_mark.line + 1))
    except yaml.reader.ReaderError as exc:
        problem = _reader_error(exc, text)
        errors.append(DefinitionError(source, problem.line, "", problem.message))
    except yaml.YAMLError as exc:
        problem = _yaml_error(exc)
        errors.append(DefinitionError(source, problem.line, "", problem.message))
    except _YamlProblemError as problem:
        errors.append(DefinitionError(source, problem.line, "", problem.message))
    except RecursionError:  # a deep stack already (MAX_DEPTH keeps the file's own nesting bounded)
        errors.append(DefinitionError(source, None, "", "nested too deeply: flatten the data"))
    finally:
        loader.dispose()
    return docs, errors


# --------------------------------------------------------------------------- pydantic errors → lines


def _strip(ann: Any) -> Any:
    while get_origin(ann) is typing.Annotated:
        ann = get_args(ann)[0]
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _union_variant(ann: Any, tag: str | int) -> Any:
    for arg in get_args(ann):
        arg = _strip(arg)
        if _is_model(arg):
            field = arg.model_fields.get("type")
            if field is not None and field.default == tag:
                return arg
    return None


def _model_at(raw_loc: Loc) -> type[BaseModel] | None:
    """The model class at a raw pydantic loc (tags included), for "did you mean" hints."""
    ann: Any = Job
    for part in raw_loc:
        ann = _strip(ann)
        if _is_model(ann):
            field = ann.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            ann = field.annotation
        elif get_origin(ann) is list and isinstance(part, int):
            ann = get_args(ann)[0]
        elif get_origin(ann) is dict:
            ann = get_args(ann)[1]
        elif get_origin(ann) in (Union, types.UnionType):
            ann = _union_variant(ann, part)
            if ann is None:
                return None
        else:
            return None
    ann = _strip(ann)
    return ann if _is_model(ann) else None


def _union_positions() -> list[Loc]:
    """Locs (with '*' for any index) of the tagged unions in Job: pydantic puts the tag after them."""
    out: list[Loc] = []

    def walk(ann: Any, loc: Loc, depth: int) -> None:
        if depth > 6:
            return
        ann = _strip(ann)
        if get_origin(ann) in (Union, types.UnionType):
            out.append(loc)
            return
        if get_origin(ann) is list:
            walk(get_args(ann)[0], (*loc, "*"), depth + 1)
        elif _is_model(ann):
            for name, field in ann.model_fields.items():
                walk(field.annotation, (*loc, name), depth + 1)

    walk(Job, (), 0)
    return out


_UNIONS = _union_positions()


def _loc_part_matches(pattern: str | int, part: str | int) -> bool:
    return isinstance(part, int) if pattern == "*" else pattern == part


def _clean_loc(loc: Loc) -> Loc:
    """Drop the discriminator tags pydantic adds: ("target", "http", "url") → ("target", "url")."""
    out = list(loc)
    for pos in sorted(_UNIONS, key=len, reverse=True):
        n = len(pos)
        if len(out) > n and isinstance(out[n], str) and all(map(_loc_part_matches, pos, out)):
            del out[n]
    return tuple(out)


_SECRETISH = ("secret", "password", "token")


def _message(err: Mapping[str, Any], raw_loc: Loc) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    where = "trigger" if raw_loc[:1] == ("triggers",) else "target" if raw_loc[:1] == ("target",) else "value"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = str(raw_loc[-1])
        model = _model_at(raw_loc[:-1])
        if model is None:
            return f"unknown field {name!r}"
        known = list(model.model_fields)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known fields: " + ", ".join(known)
        return f"unknown field {name!r} ({hint})"
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {where} type {ctx.get('tag')!r} (expected one of: {expected})"
    if kind == "union_tag_not_found":
        if where == "trigger":
            return (
                "a trigger needs a type: cron, interval, at, api or webhook "
                '(e.g. `- cron: "0 * * * *"` or `- type: api`)'
            )
        return "a target needs `type:` (e.g. local or http)"
    if kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(str(ctx.get("pattern", "")))
        if words is not None:
            return f"{words}, got {value!r}" if isinstance(value, str) and len(value) <= 80 else words
    if kind in ("enum", "literal_error") and isinstance(value, str) and len(value) <= 80:
        return _choice_message(value, str(ctx.get("expected", "")), raw_loc)
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    secretish = any(isinstance(p, str) and any(s in p.lower() for s in _SECRETISH) for p in raw_loc)
    if isinstance(value, str | int | float) and not isinstance(value, bool) and not secretish:
        shown = repr(value)
        if raw_loc and raw_loc[-1] == "cron" and isinstance(value, str):
            if shown not in msg:
                msg = f"cron {shown}: {msg}"
        elif shown not in msg and len(shown) <= 80:
            msg = f"{msg}, got {shown}"
    return msg


_PATTERN_WORDS = {
    NAME_RE: "a job name is 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit",
    PARAM_RE: "a parameter name is a letter or '_' followed by up to 63 letters, digits or '_' "
    "(it becomes the variable JOBWIRE_PARAM_<NAME>)",
    r"^[A-Za-z0-9_.-]{1,64}$": "an id is 1 to 64 letters, digits, '_', '.' or '-'",
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$": "a Kubernetes name of up to 63 lower-case letters, digits "
    "or '-', starting and ending with a letter or digit",
    r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$": "a Kubernetes name of up to 253 lower-case letters, digits, "
    "'-' or '.', starting and ending with a letter or digit",
}
"""Plain words for the name patterns of the model (pydantic would print the regular expression)."""


def _choice_message(value: str, expected: str, raw_loc: Loc) -> str:
    """`'integr' is not a parameter type: use one of string, integer, ... (did you mean 'integer'?)`"""
    choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    field = str(raw_loc[-1]) if raw_loc else "value"
    what = "a parameter type" if raw_loc[:1] == ("parameters",) and field == "type" else f"a valid {field}"
    return f"{value!r} is not {what}: use one of {', '.join(choices)}{hint}"


def _nearest_line(lines: Mapping[Loc, int], loc: Loc, default: int | None) -> int | None:
    if not lines:  # a JSON file's (no lines kept): every job of it asks
        return default
    for n in range(len(loc), -1, -1):
        line = lines.get(loc[:n])
        if line is not None:
            return line
    return default


# --------------------------------------------------------------------------- seed 003


def is_seed003(data: Any) -> bool:
    """Seed 003's form: has `schedule` or a `job` mapping, and none of jobwire's `target`/`triggers`."""
    if not isinstance(data, Mapping) or "target" in data or "triggers" in data:
        return False
    return "schedule" in data or isinstance(data.get("job"), Mapping)


def _seed003_problems(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    for key in data:
        if key not in SEED003_KEYS:
            problems.append(
                (
                    (str(key),),
                    f"{key!r} is not part of seed 003's job form (name, description, schedule, job); "
                    "use jobwire's form (triggers, target, ...) for anything more",
                )
            )
    for key in ("name", "schedule", "job"):
        if key not in data:
            problems.append(((key,), "required field is missing"))
    if "schedule" in data and not isinstance(data["schedule"], str):
        problems.append((("schedule",), "expected a cron expression string such as '* * * * *'"))
    job = data.get("job")
    if "job" in data and not isinstance(job, Mapping):
        problems.append((("job",), "expected an object with callback_url, http_method and payload"))
    if isinstance(job, Mapping):
        for key in job:
            if key not in SEED003_JOB_KEYS:
                problems.append(
                    (
                        ("job", str(key)),
                        f"{key!r} is not part of seed 003's job form "
                        "(callback_url, http_method, payload); use jobwire's http target for more",
                    )
                )
        if "callback_url" not in job:
            problems.append((("job", "callback_url"), "required field is missing"))
        method = job.get("http_method", "POST")
        if not isinstance(method, str):
            problems.append((("job", "http_method"), "expected an HTTP method such as 'post'"))
    return problems


def from_seed003(data: Mapping[str, Any], source: str = "api") -> dict[str, Any]:
    """Seed 003's job form → jobwire's: a cron trigger with id `schedule` (UTC) and an http target
    (url = callback_url, method = http_method in upper case, default POST; payload as is).
    Raises JobFileError when the form has keys seed 003 does not have, or lacks required ones."""
    problems = _seed003_problems(data)
    if problems:
        raise JobFileError([DefinitionError(source, None, format_loc(loc), msg) for loc, msg in problems])
    job = data["job"]
    out: dict[str, Any] = {
        "name": data["name"],
        "triggers": [{"type": "cron", "id": "schedule", "cron": data["schedule"]}],
        "target": {
            "type": "http",
            "url": job["callback_url"],
            "method": str(job.get("http_method") or "POST").upper(),
            "payload": job.get("payload"),
        },
    }
    if data.get("description") is not None:
        out["description"] = data["description"]
    return out


def to_seed003(job: Job) -> dict[str, Any] | None:
    """The job in seed 003's form, when that form says all there is to say about it (one cron
    trigger with id `schedule` in UTC, an http target with default headers/timeout/status/guard,
    default policies, no parameters); otherwise None. `parse_job(to_seed003(job)) == job`."""
    from jobwire.model import CronTrigger, HttpTarget

    if (
        len(job.triggers) != 1
        or not isinstance(job.triggers[0], CronTrigger)
        or not isinstance(job.target, HttpTarget)
    ):
        return None
    trig, target = job.triggers[0], job.target
    seed = {
        "name": job.name,
        "description": job.description,
        "schedule": trig.cron,
        "job": {"callback_url": target.url, "http_method": target.method.lower(), "payload": target.payload},
    }
    try:
        same = Job.model_validate(from_seed003(seed)) == job
    except (JobFileError, ValidationError):
        return None
    return seed if same else None


_NO_PLACE = "seed 003's form has no place for this setting (only its default)"


def seed003_obstacles(job: Job) -> list[tuple[str, str]]:
    """Why `to_seed003(job)` is None: `(path, why)` for each setting of `job` that seed 003's form
    has no place for (empty when the job can be shown in that form)."""
    from jobwire.model import CronTrigger, HttpTarget

    kinds = [t.type for t in job.triggers]
    problems: list[tuple[str, str]] = []
    if len(kinds) != 1 or not isinstance(job.triggers[0], CronTrigger):
        problems.append(
            ("triggers", f"seed 003's form has exactly one cron trigger, not: {', '.join(kinds) or 'none'}")
        )
    if not isinstance(job.target, HttpTarget):
        problems.append(("target", f"seed 003's form calls an http target, not {job.target.type}"))
    if problems:
        return problems
    trig, target = job.triggers[0], job.target
    assert isinstance(trig, CronTrigger) and isinstance(target, HttpTarget)
    seed = {
        "name": job.name,
        "description": job.description,
        "schedule": trig.cron,
        "job": {"callback_url": target.url, "http_method": target.method.lower(), "payload": target.payload},
    }
    try:
        plain = Job.model_validate(from_seed003(seed)).model_dump(mode="json")
    except (JobFileError, ValidationError) as exc:
        return [("", str(exc))]
    mine = job.model_dump(mode="json")
    for key in mine:
        if key in ("triggers", "target"):
            sub_mine, sub_plain = mine[key], plain[key]
            if key == "triggers":
                sub_mine, sub_plain, key = sub_mine[0], sub_plain[0], "triggers[0]"
            problems += [(f"{key}.{k}", _NO_PLACE) for k in sub_mine if sub_mine[k] != sub_plain.get(k)]
        elif mine[key] != plain.get(key):
            problems.append((key, _NO_PLACE))
    return problems


def _to_seed_loc(loc: Loc) -> Loc:
    """A jobwire loc of a converted seed 003 job → where it came from in seed 003's form."""
    if loc[:1] in (("name",), ("description",)):
        return loc
    if loc[:1] == ("triggers",):
        return ("schedule",)
    if loc[:2] == ("target", "url"):
        return ("job", "callback_url")
    if loc[:2] == ("target", "method"):
        return ("job", "http_method")
    if loc[:2] == ("target", "payload"):
        return ("job", "payload", *loc[2:])
    if loc[:1] == ("target",):
        return ("job",)
    return ()


# --------------------------------------------------------------------------- validation


def _validate(
    data: Any, base: Loc, lines: Mapping[Loc, int], source: str, default_line: int | None
) -> tuple[Job | None, list[DefinitionError]]:
    """One job mapping (either form) → Job, or its errors."""

    name = data.get("name") if isinstance(data, Mapping) else None

    def err(loc: Loc, message: str) -> DefinitionError:
        full = (*base, *loc)
        return DefinitionError(
            source,
            _nearest_line(lines, full, default_line),
            format_loc(full),
            message,
            name if isinstance(name, str) and loc != ("name",) else None,
        )

    if not isinstance(data, Mapping):
        return None, [err((), f"a job must be a mapping, got {type(data).__name__}")]
    seed = is_seed003(data)
    if seed:
        problems = _seed003_problems(data)
        if problems:
            return None, [err(loc, msg) for loc, msg in problems]
        data = from_seed003(data, source)
    errors: list[DefinitionError] = []
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        for e in exc.errors():
            raw = tuple(e["loc"])
            loc = _clean_loc(raw)
            message = _message(e, raw)
            if e["type"] == "program_from_parameter":
                loc = (*loc, 0)
            if seed:
                loc = _to_seed_loc(loc)
            errors.append(err(loc, message))
        return None, errors
    for loc, message in check_definition(job):
        errors.append(err(_to_seed_loc(loc) if seed else loc, message))
    return (None, errors) if errors else (job, [])


@dataclass(eq=False)
class _Loaded:
    name: str
    job: Job | None
    """None when the definition has errors (its name still counts for duplicates)."""
    source: str
    line: int | None
    path: str
    row: bool = False
    """A row of a CSV registry: when it is bad or its name is taken, it is skipped, not an error
    that stops the files from loading."""


def _jobs_of_csv(
    text: str, source: str
) -> tuple[list[_Loaded], list[DefinitionError], list[DefinitionError]]:
    """The rows of a CSV registry; errors of the file itself; problems of rows (skipped rows)."""
    from jobwire.jobcsv import CsvProblem, parse_csv

    def error(p: CsvProblem) -> DefinitionError:
        return DefinitionError(source, p.line, f"column {p.column}" if p.column else "", p.message, p.job)

    rows, file_problems = parse_csv(text)
    loaded = [
        _Loaded(row.name, row.job, source, row.line, "column job_name", row=True)
        for row in rows
        if row.name is not None
    ]
    return loaded, [error(p) for p in file_problems], [error(p) for row in rows for p in row.problems]


def _jobs_of_text(text: str, source: str) -> tuple[list[_Loaded], list[DefinitionError]]:
    """The jobs of one YAML/JSON file: first from libyaml's events (`yamlfast`), which is what a
    file without a problem needs; a file it gives up on, or with any error, is composed again by
    the careful path, so every error names its line exactly as before."""
    fast = yamlfast.compose(text, MAX_DEPTH, MAX_NODES)
    if fast is not None:
        loaded, errors = _jobs_of_docs([_Doc(d.data, dict(d.lines), d.line) for d in fast], [], source)
        if not errors:
            return loaded, errors
    docs, errors = _compose(text, source)
    return _jobs_of_docs(docs, errors, source)


def _jobs_of_docs(
    docs: list[_Doc], errors: list[DefinitionError], source: str
) -> tuple[list[_Loaded], list[DefinitionError]]:
    loaded: list[_Loaded] = []
    for doc in docs:
        data = doc.data
        if data is None:
            continue
        items: list[tuple[Any, Loc]]
        if isinstance(data, Mapping) and "jobs" in data:
            others = [k for k in data if k != "jobs"]
            for k in others:
                errors.append(
                    DefinitionError(
                        source,
                        doc.lines.get((k,), doc.line),
                        format_loc((str(k),)),
                        "a file with `jobs:` holds nothing else at the top level",
                    )
                )
            jobs = data["jobs"]
            if jobs is None:
                continue
            if not isinstance(jobs, list):
                errors.append(
                    DefinitionError(source, doc.lines.get(("jobs",)), "jobs", "expected a list of jobs")
                )
                continue
            items = [(item, ("jobs", i)) for i, item in enumerate(jobs)]
        elif isinstance(data, Mapping):
            items = [(data, ())]
        else:
            errors.append(
                DefinitionError(
                    source,
                    doc.line,
                    "",
                    "expected `jobs: [...]` or a single job mapping at the top level, "
                    f"got {type(data).__name__}",
                )
            )
            continue
        for item, base in items:
            job, errs = _validate(item, base, doc.lines, source, doc.line)
            errors.extend(errs)
            name = job.name if job is not None else item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str):
                line = _nearest_line(doc.lines, (*base, "name"), doc.line)
                path = f"jobs[{base[1]}].name" if len(base) == 2 else format_loc((*base, "name"))
                loaded.append(_Loaded(name, job, source, line, path))
    return loaded, errors


def _where(item: _Loaded) -> str:
    return item.source if item.line is None else f"{item.source}:{item.line}"


def _dedupe(loaded: list[_Loaded]) -> tuple[list[_Loaded], list[DefinitionError], list[DefinitionError]]:
    """(kept, errors, skipped rows): the first definition of a name wins, except that a CSV row
    gives way to a job file's job wherever it comes; a CSV row that loses is skipped."""
    first: dict[str, _Loaded] = {}
    kept: list[_Loaded] = []
    errors: list[DefinitionError] = []
    skipped: list[DefinitionError] = []
    for item in loaded:
        prev = first.get(item.name)
        if prev is None:
            first[item.name] = item
            if item.job is not None:
                kept.append(item)
            continue
        if prev.row and not item.row:
            if prev in kept:
                kept.remove(prev)
            skipped.append(
                DefinitionError(
                    prev.source,
                    prev.line,
                    prev.path,
                    f"duplicate job name {prev.name!r}: also defined at {_where(item)}, which is used; "
                    "this row is skipped",
                )
            )
            first[item.name] = item
            if item.job is not None:
                kept.append(item)
            continue
        message = f"duplicate job name {item.name!r}: already defined at {_where(prev)}"
        if item.row:
            message += "; this row is skipped"
            skipped.append(DefinitionError(item.source, item.line, item.path, message))
        else:
            errors.append(DefinitionError(item.source, item.line, item.path, message))
    return kept, errors, skipped


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        kinds = (".yaml", ".yml", ".json", ".csv")  # .json: seed 003's job form
        return sorted(p for p in path.rglob("*") if p.suffix in kinds and p.is_file())
    return [path]


def _load_files(
    paths: Iterable[Path], texts: Iterable[tuple[str, str]] = ()
) -> tuple[list[_Loaded], list[DefinitionError], list[DefinitionError]]:
    """(kept, errors, skipped CSV rows) of every file under `paths` and of the `(source, text)`
    files read elsewhere (`s3://…`; CSV when the source ends with `.csv`), names unique across them."""
    loaded: list[_Loaded] = []
    errors: list[DefinitionError] = []
    skipped: list[DefinitionError] = []
    for root in paths:
        if not root.exists():
            errors.append(DefinitionError(str(root), None, "", "no such file or directory"))
            continue
        try:
            files = _files(root)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
            errors.append(
                DefinitionError(
                    str(root), None, "", f"cannot list the folder: {exc.strerror}{where}: make it readable"
                )
            )
            continue
        for file in files:
            text = _read(file)
            if isinstance(text, DefinitionError):
                errors.append(text)
                continue
            if file.suffix == ".csv":
                jobs, errs, bad_rows = _jobs_of_csv(text, str(file))
                skipped.extend(bad_rows)
            else:
                jobs, errs = _jobs_of_text(text, str(file))
            loaded.extend(jobs)
            errors.extend(errs)
    for source, text in texts:
        if source.endswith(".csv"):
            jobs, errs, bad_rows = _jobs_of_csv(text, source)
            skipped.extend(bad_rows)
        else:
            jobs, errs = _jobs_of_text(text, source)
        loaded.extend(jobs)
        errors.extend(errs)
    kept, dup_errors, dup_rows = _dedupe(loaded)
    return kept, _sorted(errors + dup_errors), _sorted(skipped + dup_rows)


def _read(file: Path) -> str | DefinitionError:
    """The text of a job file, or why it cannot be one (too large, not UTF-8, unreadable)."""
    source = str(file)
    try:
        with file.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return DefinitionError(source, None, "", f"cannot read: {exc.strerror}")
    if len(data) > MAX_FILE_BYTES:
        return DefinitionError(
            source,
            None,
            "",
            f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the most a job file may be: "
            "split the jobs into several files in a folder",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return DefinitionError(
            source,
            line,
            "",
            f"not UTF-8: byte 0x{data[exc.start]:02x} at column {column} (byte offset {exc.start}): "
            "save the file as UTF-8",
        )


def _sorted(errors: list[DefinitionError]) -> list[DefinitionError]:
    """Grouped by file (in the order first seen), by line within a file."""
    order = {src: i for i, src in reversed(list(enumerate(e.source for e in errors)))}
    return sorted(errors, key=lambda e: (order[e.source], e.line or 0))


def load_text(text: str, source: str) -> list[Job]:
    """The jobs in one YAML text. Raises JobFileError with every error found."""
    loaded, errors = _jobs_of_text(text, source)
    kept, dup_errors, _ = _dedupe(loaded)  # no CSV rows here
    if errors or dup_errors:
        raise JobFileError(_sorted(errors + dup_errors))
    return [item.job for item in kept if item.job is not None]


def load_path(path: Path) -> list[tuple[Job, str]]:
    """The jobs in a file, or in every *.yaml / *.yml / *.csv under a folder (recursively, sorted),
    each with its origin `file:<path>`. Raises JobFileError with every error of every file, bad CSV
    rows included (`load_paths` skips those instead)."""
    kept, errors, skipped = _load_files([path])
    if errors or skipped:
        raise JobFileError(_sorted(errors + skipped))
    return [(item.job, f"file:{item.source}") for item in kept if item.job is not None]


def load_paths(
    paths: Iterable[Path], texts: Iterable[tuple[str, str]] = ()
) -> tuple[list[tuple[Job, str]], list[DefinitionError]]:
    """What `jobwire serve` loads: the jobs of every path and of every `(source, text)` read
    elsewhere (an `s3://` URL and its text; names unique across all of them), each with its origin
    `file:<path or URL>`, and the problems of the CSV rows that were skipped. Raises JobFileError
    with every error when anything but a CSV row is wrong."""
    kept, errors, skipped = _load_files(paths, texts)
    if errors:
        raise JobFileError(errors)
    return [(item.job, f"file:{item.source}") for item in kept if item.job is not None], skipped


def check_paths(paths: list[Path]) -> tuple[list[Job], list[DefinitionError]]:
    """For `jobwire check`: the valid jobs and every error, without raising for definition errors.
    Job names must be unique across all the paths."""
    jobs, errors, _ = check_files(paths)
    return jobs, errors


def check_files(
    paths: list[Path], environ: Mapping[str, str] | None = None
) -> tuple[list[Job], list[DefinitionError], list[DefinitionError]]:
    """`check_paths` plus warnings: what loads but will not work as it stands — a webhook trigger
    whose `secret_env` names a variable unset in `environ` (this process's environment), a trigger
    or target whose pip extra is not installed here. The file still loads (the variable may be
    set, the extra installed, where and when jobwire serves)."""
    kept, errors, skipped = _load_files(paths)
    errors = _sorted(errors + skipped)  # for `check`, a row that would be skipped is an error
    warnings: list[DefinitionError] = []
    for item in kept:
        if item.job is None:
            continue
        base = item.path.removesuffix("name").rstrip(".")  # `jobs[1].name` → `jobs[1]`
        for index, trigger_id, variable in unset_webhook_secrets(item.job, environ):
            warnings.append(
                DefinitionError(
                    item.source,
                    item.line,
                    ".".join(p for p in (base, f"triggers[{index}].secret_env") if p),
                    f"webhook trigger {trigger_id!r} of job {item.job.name!r}: "
                    + unset_secret_text(variable, "this environment"),
                )
            )
        for path, problem in job_problems(item.job):  # a pip extra this job needs is not installed
            where = ".".join(p for p in (base, path) if p)
            message = f"job {item.job.name!r}: {problem}"
            warnings.append(DefinitionError(item.source, item.line, where, message))
    return [item.job for item in kept if item.job is not None], errors, warnings


def unset_webhook_secrets(job: Job, environ: Mapping[str, str] | None = None) -> list[tuple[int, str, str]]:
    """(index, trigger id, variable) of each webhook trigger of `job` with no inline `secret` whose
    `secret_env` is unset or empty in `environ` (default: this process's environment) — a trigger
    whose every delivery would be refused."""
    import os

    from jobwire.model import WebhookTrigger

    env = os.environ if environ is None else environ
    out = []
    for index, (trigger, trigger_id) in enumerate(zip(job.triggers, job.trigger_ids(), strict=True)):
        if not isinstance(trigger, WebhookTrigger) or trigger.secret or not trigger.secret_env:
            continue
        if not env.get(trigger.secret_env):
            out.append((index, trigger_id, trigger.secret_env))
    return out


def unset_secret_text(variable: str, here: str = "jobwire's environment") -> str:
    return (
        f"its secret_env {variable} is not set in {here}; set {variable} in the environment of "
        "`jobwire serve` (and restart it), or every delivery is refused (403)"
    )


def parse_job(data: Any, source: str = "api") -> Job:
    """One job from an API body: jobwire's form or seed 003's. Raises JobFileError."""
    job, errors = _validate(data, (), {}, source, None)
    if job is None:
        raise JobFileError(errors)
    return job
