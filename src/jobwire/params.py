"""Parameters: the only way an event's data reaches a job.

Pure functions, no I/O:

* `resolve_params` turns what a caller supplied (an API body, a broker payload) plus a trigger's
  fixed values into the validated, typed parameters of one run;
* `render` (and friends) substitutes `{{name}}` placeholders in the parts of a target that may be
  templated (argv elements, env values, HTTP url/headers/payload). It is deliberately not a
  template *language*: no expressions, no filters, no code, and substituted text is never
  scanned again, so a value containing `{{x}}` or `$(rm -rf /)` arrives byte for byte;
* `check_definition` is the definition-time check (every placeholder is a declared parameter,
  placeholders only where they are allowed, defaults/choices/fixed values have the right type);
* `mask_params` / `param_env` for display and for the environment of a process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import BaseModel

from jobwire.model import TIME_TRIGGERS, Job, Parameter, ParamType
from jobwire.redact import mask_fields, secret_field

__all__ = [
    "MASK",
    "TEMPLATED_FIELDS",
    "Loc",
    "ParamError",
    "check_definition",
    "coerce",
    "mask_params",
    "param_env",
    "placeholders",
    "render",
    "render_argv",
    "render_headers",
    "render_text",
    "render_url",
    "resolve_params",
]

Loc = tuple[str | int, ...]
"""A path inside a job definition, as pydantic spells it: ("target", "command", 1)."""

MASK = "****"

PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""`{{name}}` or `{{ name }}`. Anything else between braces (`{{.State}}`, `{{ a | b }}`) is not a
placeholder and stays literal text, so tools with their own templates (docker --format) still work."""

_INT_RE = re.compile(r"[+-]?\d+")
_NUM_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class ParamError(ValueError):
    """Bad parameters. `errors` holds every problem found, as (parameter name or "payload", what is wrong)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "; ".join(_format_error(name, msg) for name, msg in self.errors)


def _format_error(name: str, msg: str) -> str:
    return f"payload: {msg}" if name == "payload" else f"parameter {name!r}: {msg}"


# --------------------------------------------------------------------------- coercion


class _BadValueError(Exception):
    """One coercion failure; `expected` completes 'expected ...'."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _describe(value: Any, secret: bool = False) -> str:
    """How a bad value is shown in an error (never the value of a secret)."""
    if secret:
        return MASK
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, allow_nan=False, default=repr)
        except ValueError:
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(ptype: ParamType, value: Any, secret: bool = False) -> Any:
    """Coerce one non-null value to a parameter type; raises ValueError('expected ...'), which
    shows the value unless `secret`.

    Text is accepted for integer/number/boolean because CLI `--param k=v` and query strings are
    text. Booleans are never numbers (True is not 1) and numbers are never booleans.
    """
    try:
        return _coerce(ptype, value)
    except _BadValueError as exc:
        raise ValueError(f"expected {exc.expected}, got {_describe(value, secret)}") from None


def _coerce(ptype: ParamType, value: Any) -> Any:
    if ptype == ParamType.string:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float) and math.isfinite(value):
            return repr(value)
        raise _BadValueError("string")
    if ptype == ParamType.integer:
        if isinstance(value, bool):
            raise _BadValueError("integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            try:
                return int(value.strip())
            except ValueError:  # more digits than Python converts
                raise _BadValueError("integer") from None
        raise _BadValueError("integer")
    if ptype == ParamType.number:
        if isinstance(value, bool):
            raise _BadValueError("number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        if isinstance(value, str):
            text = value.strip()
            if _INT_RE.fullmatch(text):
                try:
                    return int(text)
                except ValueError:
                    raise _BadValueError("number") from None
            if _NUM_RE.fullmatch(text):
                number = float(text)
                if math.isfinite(number):
                    return number
        raise _BadValueError("number")
    if ptype == ParamType.boolean:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise _BadValueError("boolean (true or false)")
    # json: any JSON value, kept as given (a string stays a string: it is not parsed)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise _BadValueError("a JSON value") from None
    return value


def _check_one(p: Parameter, value: Any) -> Any:
    """Coerce and check choices; raises _BadValueError-free ValueError with the full message."""
    try:
        out = _coerce(p.type, value)
    except _BadValueError as exc:
        raise ValueError(f"expected {exc.expected}, got {_describe(value, p.secret)}") from None
    if p.choices is not None:
        allowed = []
        for c in p.choices:
            try:
                allowed.append(_coerce(p.type, c))
            except _BadValueError:
                continue
        if not any(_same(out, a) for a in allowed):
            if p.secret:
                n = len(p.choices)
                raise ValueError(f"must be one of its {n} choices (not shown: a secret parameter)")
            shown = ", ".join(_describe(c) for c in p.choices)
            raise ValueError(f"must be one of {shown}, got {_describe(value)}")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and bool(a == b)
    return bool(a == b)


# --------------------------------------------------------------------------- resolve


def resolve_params(
    job: Job,
    supplied: Mapping[str, Any] | None,
    fixed: Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """The typed parameters of one run, one entry per declared parameter (None when absent and
    optional without a default), in declaration order.

    `fixed` (a trigger's `params`) wins over `supplied`; supplying a fixed one is not an error.
    strict (API bodies): a supplied key the job does not declare is an error; not strict (broker
    payloads): such keys are ignored. A null value counts as not supplied. Every problem is
    collected into one ParamError.
    """
    if not job.parameters and not fixed and (supplied is None or (type(supplied) is dict and not supplied)):
        return {}  # nothing declared, nothing given: what the walk below finds, without it
    errors: list[tuple[str, str]] = []
    sup: Mapping[Any, Any] = {}
    if supplied is not None:
        if isinstance(supplied, Mapping):
            sup = supplied
        else:
            errors.append(("payload", f"expected an object of parameters, got {_kind(supplied)}"))
    fx: Mapping[Any, Any] = fixed or {}
    declared = {p.name: p for p in job.parameters}

    out: dict[str, Any] = {}
    for p in job.parameters:
        value = fx[p.name] if fx.get(p.name) is not None else sup.get(p.name)
        if value is None:
            value = p.default if p.required is not True else None
        if value is None:
            if p.is_required:
                errors.append((p.name, f"required {p.type.value} parameter is missing"))
            out[p.name] = None
            continue
        try:
            out[p.name] = _check_one(p, value)
        except ValueError as exc:
            errors.append((p.name, str(exc)))

    for key in fx:
        if key not in declared:
            errors.append((str(key), f"fixed by the trigger but not a parameter of job {job.name!r}"))
    if strict:
        for key in sup:
            if key not in declared and key not in fx:
                errors.append((str(key), _undeclared(job)))
    if errors:
        raise ParamError(errors)
    return out


def _undeclared(job: Job) -> str:
    if not job.parameters:
        return f"job {job.name!r} declares no parameters"
    names = ", ".join(p.name for p in job.parameters)
    return f"not a parameter of job {job.name!r} (parameters: {names})"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def mask_params(job: Job, params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy fit for logs, events and API answers: values of secret parameters become "****",
    and so do the values of undeclared fields whose names look secret (`password`, `api_token`:
    a payload may carry more than the job declares, and lineage keeps the payload)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        p = job.param(key)
        if p is not None:
            out[key] = MASK if p.secret and value is not None else value
        else:
            out[key] = MASK if secret_field(key) and value is not None else mask_fields(value)
    return out


def _text(value: Any) -> str:
    """A parameter value as text: strings as they are, booleans and JSON as JSON text, None as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def param_env(params: Mapping[str, Any]) -> dict[str, str]:
    """JOBWIRE_PARAM_<NAME> for each parameter with a value (absent optional ones are left unset)."""
    return {f"JOBWIRE_PARAM_{name.upper()}": _text(v) for name, v in params.items() if v is not None}


# --------------------------------------------------------------------------- templating


def placeholders(value: Any) -> set[str]:
    """The parameter names used by `{{name}}` placeholders in value (strings inside dicts and lists;
    dict keys are not templated and are not looked at)."""
    return {name for _, name in _walk_placeholders(value, ())}


def _walk_placeholders(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(value, str):
        if "{{" in value:  # most strings have none: skip the regex engine
            for m in PLACEHOLDER_RE.finditer(value):
                yield loc, m.group(1)
    elif value is None or isinstance(value, int | float):
        return
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk_placeholders(v, (*loc, str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _walk_placeholders(v, (*loc, i))


def render(value: Any, params: Mapping[str, Any]) -> Any:
    """Substitute placeholders. A string that is exactly one placeholder becomes the typed value
    (JSON payload fields keep their type); inside a longer string the value's text is inserted
    (JSON and booleans as JSON text). Dicts and lists are rendered recursively, keys untouched;
    other values are returned as they are. An unknown name raises ParamError."""
    missing: list[str] = []
    out = _render(value, params, missing, _text)
    _raise_missing(missing)
    return out


def render_text(template: str, params: Mapping[str, Any]) -> str:
    """Always text, even for a lone placeholder (argv elements, env values)."""
    missing: list[str] = []
    out = _sub(template, params, missing, _text)
    _raise_missing(missing)
    return out


def render_argv(argv: list[str], params: Mapping[str, Any]) -> list[str]:
    """Each element rendered as text: one parameter never becomes several arguments, never a shell line."""
    missing: list[str] = []
    out = [_sub(a, params, missing, _text) for a in argv]
    _raise_missing(missing)
    return out


def render_headers(headers: Mapping[str, str], params: Mapping[str, Any]) -> dict[str, str]:
    """Header (or env) values rendered as text; a value with CR/LF/NUL is refused (header injection)."""
    missing: list[str] = []
    out = {k: _sub(v, params, missing, _text) for k, v in headers.items()}
    _raise_missing(missing)
    bad = [
        (name, f"used in header {k!r} but its value contains a line break or NUL")
        for k, v in headers.items()
        for name in sorted(placeholders(v))
        if any(c in _text(params[name]) for c in "\r\n\0")
    ]
    if bad:
        raise ParamError(bad)
    return out


def render_url(url: str, params: Mapping[str, Any]) -> str:
    """Substitute placeholders in a URL, percent-encoding each substituted value completely
    (including '/', '?', '#', '@', ':'), so a value can never change the host or add a path segment."""
    missing: list[str] = []
    out = _sub(url, params, missing, lambda v: quote(_text(v), safe=""))
    _raise_missing(missing)
    return out


def _raise_missing(missing: list[str]) -> None:
    if missing:
        names = list(dict.fromkeys(missing))
        raise ParamError([(n, "used by a {{placeholder}} but not a parameter of this run") for n in names])


def _sub(text: str, params: Mapping[str, Any], missing: list[str], conv: Callable[[Any], str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            missing.append(name)
            return m.group(0)
        return conv(params[name])

    # re.sub scans the template once: substituted text is never looked at again.
    return PLACEHOLDER_RE.sub(one, text)


def _render(value: Any, params: Mapping[str, Any], missing: list[str], conv: Callable[[Any], str]) -> Any:
    if isinstance(value, str):
        m = PLACEHOLDER_RE.fullmatch(value)
        if m is not None:
            if m.group(1) not in params:
                missing.append(m.group(1))
                return value
            return params[m.group(1)]
        return _sub(value, params, missing, conv)
    if isinstance(value, Mapping):
        return {k: _render(v, params, missing, conv) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_render(v, params, missing, conv) for v in value]
    return value


# --------------------------------------------------------------------------- definition-time checks

TEMPLATED_FIELDS: dict[str, tuple[str, ...]] = {
    "local": ("command", "env"),
    "http": ("url", "headers", "payload"),
    "kubernetes": ("env", "args"),
}
"""Per target type, the fields whose strings may hold placeholders. A placeholder anywhere else
in a target of a listed type is a definition error (it would never be substituted). Targets not
listed here only get the "declared parameter" check."""


def check_definition(job: Job) -> list[tuple[Loc, str]]:
    """Problems a job definition has that pydantic cannot see, as (path inside the job, message):
    placeholders naming undeclared parameters or used where they are not allowed, defaults,
    choices and trigger `params` of the wrong type, required parameters a time trigger cannot fill."""
    problems: list[tuple[Loc, str]] = []
    declared = {p.name: p for p in job.parameters}
    names = ", ".join(declared) or "none"

    for i, p in enumerate(job.parameters):
        base: Loc = ("parameters", i)
        for j, c in enumerate(p.choices or []):
            try:
                coerce(p.type, c, p.secret)
            except ValueError as exc:
                problems.append(((*base, "choices", j), str(exc)))
        if p.default is not None:
            if p.required is True:
                problems.append(
                    ((*base, "required"), "a required parameter cannot have a default (drop one)")
                )
            try:
                _check_one(p, p.default)  # a secret's default is never shown in the error
            except ValueError as exc:
                problems.append(((*base, "default"), str(exc)))

    for i, trig in enumerate(job.triggers):
        for key, value in trig.params.items():
            loc: Loc = ("triggers", i, "params", key)
            decl = declared.get(key)
            if decl is None:
                problems.append(
                    (loc, f"{key!r} is not a parameter of job {job.name!r} (parameters: {names})")
                )
                continue
            if value is None:
                continue
            try:
                _check_one(decl, value)
            except ValueError as exc:
                problems.append((loc, str(exc)))
        if trig.type in TIME_TRIGGERS:
            for p in job.parameters:
                if p.is_required and trig.params.get(p.name) is None:
                    problems.append(
                        (
                            ("triggers", i),
                            f"a {trig.type} trigger supplies no parameters, so required parameter "
                            f"{p.name!r} needs a default or a value in this trigger's `params`",
                        )
                    )

    problems.extend(_check_target(job, declared, names))
    return problems


def _check_target(job: Job, declared: Mapping[str, Parameter], names: str) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    target = job.target
    if isinstance(target, BaseModel) and "{{" not in target.model_dump_json():
        return problems  # nothing templated anywhere in it (the walks below cost 10 µs a job)
    kind = str(getattr(target, "type", ""))
    templated = TEMPLATED_FIELDS.get(kind)
    for field in type(target).model_fields:
        value = getattr(target, field)
        base: Loc = ("target", field)
        if templated is not None and field not in templated:
            for loc, _ in _walk_placeholders(value, base):
                problems.append(
                    (loc, f"parameters cannot be used in `{field}` (only in {', '.join(templated)})")
                )
            continue
        for loc in _placeholder_keys(value, base):
            problems.append((loc, "keys are not templated; parameters can only be used in values"))
        for loc, name in _walk_placeholders(value, base):
            if name not in declared:
                problems.append(
                    (loc, f"{{{{{name}}}}} is not a parameter of job {job.name!r} (parameters: {names})")
                )
    # `{{p}}` as command[0] is refused by LocalTarget itself, with the job's other problems
    if kind == "http":
        url = str(getattr(target, "url", ""))
        parts = urlsplit(url)
        if PLACEHOLDER_RE.search(f"{parts.scheme}://{parts.netloc}"):
            problems.append(
                (
                    ("target", "url"),
                    "the scheme and host of the url cannot come from a parameter "
                    "(the destination is fixed by the definition); use parameters in the path or query",
                )
            )
        for name in placeholders(url):
            p = declared.get(name)
            if p is not None and p.secret:
                problems.append(
                    (
                        ("target", "url"),
                        f"secret parameter {name!r} cannot be used in the url (URLs are logged); "
                        "put it in a header or the payload",
                    )
                )
    return problems


def _placeholder_keys(value: Any, loc: Loc) -> Iterator[Loc]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and PLACEHOLDER_RE.search(k):
                yield (*loc, k)
            yield from _placeholder_keys(v, (*loc, str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _placeholder_keys(v, (*loc, i))
