"""JSON merge patch (RFC 7386), JSON patch (RFC 6902); strategic merge is treated as merge patch."""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f'invalid JSON pointer "{path}"', "Invalid")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise ApiError(
                422,
                f"the server rejected our request due to an error in our request: "
                f'doc is missing path: "{path}"',
                "Invalid",
            )
    return cur, parts[-1]


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, f'doc is missing path: "{path}"', "Invalid")


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path), path)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, f"Unable to remove nonexistent key: {last}: missing value", "Invalid")


def _add(doc: Any, path: str, value: Any, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(
                422, f"replace operation does not apply: doc is missing key: {path}: missing value", "Invalid"
            )
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, f"add operation does not apply: doc is missing path: {path}", "Invalid")
    else:
        raise ApiError(422, f"add operation does not apply: doc is missing path: {path}", "Invalid")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise ApiError(
            400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch", "BadRequest"
        )
    doc = copy.deepcopy(target)
    for op in ops:
        kind = op.get("op")
        path = op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "move":
            val = _remove(doc, op["from"])
            doc = _add(doc, path, val)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(422, f"testing value {path} failed: test failed", "Invalid")
        else:
            raise ApiError(422, f"Unexpected kind: {kind}", "Invalid")
    return doc


def apply_patch(content_type: str, target: Any, patch: Any) -> Any:
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise ApiError(
                400,
                "error decoding patch: json: cannot unmarshal array into Go value of type "
                "map[string]interface {}",
            )
        return merge_patch(target, patch)
    if ctype == JSON_PATCH:
        return json_patch(target, patch)
    if ctype == APPLY:
        raise ApiError(415, "server-side apply is not supported by the emulator", "UnsupportedMediaType")
    raise ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE}, {STRATEGIC}",
        "UnsupportedMediaType",
    )
