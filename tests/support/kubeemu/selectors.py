"""Label and field selectors with Kubernetes syntax and semantics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        val = labels.get(self.key)
        if self.op == "=":
            return has and val == self.values[0]
        if self.op == "!=":
            return not has or val != self.values[0]
        if self.op == "in":
            return has and val in self.values
        if self.op == "notin":
            return not has or val not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        raise AssertionError(self.op)


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        lab = labels or {}
        return all(r.matches(lab) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _check_key(key: str, raw: str) -> str:
    if not _KEY_RE.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(f'unable to parse requirement: invalid label key "{key}" in "{raw}"')
    return key


def _check_value(value: str, raw: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(f'unable to parse requirement: invalid label value: "{value}" in "{raw}"')
    return value


_SET_RE = re.compile(r"^\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``; raises 400 ApiError on bad syntax."""
    if not text or not text.strip():
        return LabelSelector()
    reqs: list[Requirement] = []
    for raw_part in _split_top(text):
        part = raw_part.strip()
        if not part:
            raise bad_request(f'unable to parse requirement: found "", expected: identifier in "{text}"')
        m = _SET_RE.match(part)
        if m:
            key = _check_key(m.group(1), text)
            vals = tuple(_check_value(v.strip(), text) for v in m.group(3).split(","))
            reqs.append(Requirement(key, m.group(2), tuple(sorted(set(vals)))))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip(), text), "!"))
            continue
        for op, norm in (("!=", "!="), ("==", "="), ("=", "=")):
            if op in part:
                key, _, value = part.partition(op)
                reqs.append(
                    Requirement(_check_key(key.strip(), text), norm, (_check_value(value.strip(), text),))
                )
                break
        else:
            if re.search(r"[<>]|\s", part):
                raise bad_request(f'unable to parse requirement: invalid selector "{part}"')
            reqs.append(Requirement(_check_key(part, text), "exists"))
    return LabelSelector(tuple(reqs))


def selector_from_label_selector_obj(sel: dict[str, Any] | None) -> LabelSelector:
    """Convert a ``metav1.LabelSelector`` object (matchLabels/matchExpressions)."""
    if not sel:
        return LabelSelector()
    reqs = [Requirement(k, "=", (v,)) for k, v in sorted((sel.get("matchLabels") or {}).items())]
    opmap = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in sel.get("matchExpressions") or []:
        reqs.append(Requirement(expr["key"], opmap[expr["operator"]], tuple(expr.get("values") or ())))
    return LabelSelector(tuple(reqs))


def selector_to_string(sel: LabelSelector) -> str:
    out = []
    for r in sel.requirements:
        if r.op in ("=", "!="):
            out.append(f"{r.key}{r.op}{r.values[0]}")
        elif r.op in ("in", "notin"):
            out.append(f"{r.key} {r.op} ({','.join(r.values)})")
        elif r.op == "exists":
            out.append(r.key)
        else:
            out.append(f"!{r.key}")
    return ",".join(out)


# ---------------------------------------------------------------- field selectors

SUPPORTED_FIELDS: dict[str, tuple[str, ...]] = {
    "*": ("metadata.name", "metadata.namespace"),
    "pods": (
        "status.phase",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "jobs": ("status.successful",),
}


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[tuple[str, str, str], ...] = ()  # (field, op "=" | "!=", value)

    def matches(self, obj: dict[str, Any]) -> bool:
        for fld, op, value in self.requirements:
            actual = field_value(obj, fld)
            if (actual == value) != (op == "="):
                return False
        return True


def field_value(obj: dict[str, Any], path: str) -> str:
    if path == "status.successful":
        return str((obj.get("status") or {}).get("succeeded", 0))
    cur: Any = obj
    for piece in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(piece)
    if cur is None:
        return ""
    return str(cur)


def parse_field_selector(text: str | None, plural: str) -> FieldSelector:
    if not text or not text.strip():
        return FieldSelector()
    reqs: list[tuple[str, str, str]] = []
    allowed = SUPPORTED_FIELDS["*"] + SUPPORTED_FIELDS.get(plural, ())
    for raw in text.split(","):
        part = raw.strip()
        for op, norm in (("!=", "!="), ("==", "="), ("=", "=")):
            if op in part:
                fld, _, value = part.partition(op)
                fld = fld.strip()
                if fld not in allowed:
                    raise ApiError(
                        400,
                        f'"{fld}" is not a known field selector: only "metadata.name", "metadata.namespace"',
                        "BadRequest",
                    )
                reqs.append((fld, norm, value.strip()))
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
    return FieldSelector(tuple(reqs))
