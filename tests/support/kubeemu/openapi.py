"""Minimal OpenAPI v3 documents.

kubectl (1.27+) decides whether the server does field validation by looking for a ``fieldValidation``
query parameter on the PATCH operation of the kind (``x-kubernetes-group-version-kind``) in
``/openapi/v3/<group-version>``. When it finds it, it sends ``fieldValidation=Strict`` and skips
client-side schema validation, so the schemas below can stay permissive. ``/openapi/v2`` answers 404
(like a server with the v2 endpoint disabled); kubectl then relies on v3 only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import RESOURCES, ResourceType, group_versions


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(r: ResourceType) -> str:
    pkg = "core" if not r.group else r.group
    return f"io.k8s.api.{pkg}.{r.version}.{r.kind}"


def _gvk(r: ResourceType, kind: str | None = None) -> dict[str, str]:
    return {"group": r.group, "version": r.version, "kind": kind or r.kind}


def _param(name: str, description: str = "", typ: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": typ, "uniqueItems": True},
    }


_WRITE_PARAMS = [
    _param("dryRun", "When present, indicates that modifications should not be persisted."),
    _param(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
    ),
    _param(
        "fieldValidation",
        "fieldValidation instructs the server on how to handle objects in the request "
        "containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.",
    ),
]
_LIST_PARAMS = [
    _param(n)
    for n in ("labelSelector", "fieldSelector", "continue", "resourceVersion", "resourceVersionMatch")
] + [
    _param("limit", typ="integer"),
    _param("timeoutSeconds", typ="integer"),
    _param("watch", typ="boolean"),
    _param("allowWatchBookmarks", typ="boolean"),
    _param("sendInitialEvents", typ="boolean"),
]


def _op(
    r: ResourceType,
    action: str,
    op_id: str,
    params: list[dict[str, Any]],
    kind: str | None = None,
    body: bool = False,
) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_schema_name(r)}"}
    op: dict[str, Any] = {
        "tags": [r.group or "core_" + r.version],
        "operationId": op_id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(r, kind),
    }
    if body:
        ctypes = ["application/json"]
        if action == "patch":
            ctypes = [
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ]
        op["requestBody"] = {"content": {c: {"schema": ref} for c in ctypes}, "required": True}
    return op


def document(group: str, version: str) -> dict[str, Any] | None:
    rs = [r for r in RESOURCES if r.group == group and r.version == version]
    if not rs:
        return None
    prefix = "/" + gv_path(group, version)
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for r in rs:
        k = r.kind
        coll = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
        item = coll + "/{name}"
        paths[coll] = {
            "get": _op(r, "list", f"list{k}", _LIST_PARAMS),
            "post": _op(r, "post", f"create{k}", _WRITE_PARAMS, body=True),
            "delete": _op(r, "deletecollection", f"deleteCollection{k}", _LIST_PARAMS),
        }
        paths[item] = {
            "get": _op(r, "get", f"read{k}", []),
            "put": _op(r, "put", f"replace{k}", _WRITE_PARAMS, body=True),
            "patch": _op(
                r, "patch", f"patch{k}", [*_WRITE_PARAMS, _param("force", typ="boolean")], body=True
            ),
            "delete": _op(
                r,
                "delete",
                f"delete{k}",
                [_param("propagationPolicy"), _param("gracePeriodSeconds", typ="integer")],
            ),
        }
        if r.status_subresource:
            paths[item + "/status"] = {
                "get": _op(r, "get", f"read{k}Status", []),
                "put": _op(r, "put", f"replace{k}Status", _WRITE_PARAMS, body=True),
                "patch": _op(r, "patch", f"patch{k}Status", _WRITE_PARAMS, body=True),
            }
        if r.namespaced:
            paths[f"{prefix}/{r.plural}"] = {"get": _op(r, "list", f"list{k}ForAllNamespaces", _LIST_PARAMS)}
        schemas[_schema_name(r)] = {
            "description": f"{k} (emulated; schema intentionally permissive)",
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [_gvk(r)],
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.34.0-kubeemu"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _digest(doc: dict[str, Any] | None) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()


def index() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gv in group_versions():
        path = gv_path(gv.group, gv.version)
        out[path] = {
            "serverRelativeURL": f"/openapi/v3/{path}?hash={_digest(document(gv.group, gv.version))}"
        }
    return {"paths": out}


# ---------------------------------------------------------------------------------------------
# OpenAPI v2, protobuf-encoded (gnostic ``openapi_v2.Document``), as kubectl <= 1.28 fetches it
# (``Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf``) to find out whether the
# server supports ``fieldValidation``. Only the fields that check reads are encoded.

V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field_no: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(field_no << 3 | 2) + _varint(len(payload)) + payload


def _s(field_no: int, text: str) -> bytes:
    return _ld(field_no, text.encode())


def _v2_operation(r: ResourceType, params: list[str]) -> bytes:
    op = b""
    for name in params:
        query = _s(2, "query") + _s(4, name) + _s(6, "string")  # QueryParameterSubSchema{in, name, type}
        non_body = _ld(3, query)  # NonBodyParameter.query_parameter_sub_schema
        parameter = _ld(2, non_body)  # Parameter.non_body_parameter
        op += _ld(8, _ld(1, parameter))  # Operation.parameters[] = ParametersItem{parameter}
    gvk_yaml = f"group: {json.dumps(r.group)}\nkind: {r.kind}\nversion: {r.version}\n"
    any_value = _s(2, gvk_yaml)  # Any.yaml
    op += _ld(13, _s(1, "x-kubernetes-group-version-kind") + _ld(2, any_value))  # vendor_extension
    return op


def v2_protobuf() -> bytes:
    paths = b""
    for r in RESOURCES:
        prefix = "/" + gv_path(r.group, r.version)
        coll = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
        params = ["dryRun", "fieldManager", "fieldValidation"]
        item = _ld(8, _v2_operation(r, [*params, "force"]))  # PathItem.patch
        item += _ld(3, _v2_operation(r, params))  # PathItem.put
        paths += _ld(1, _s(1, coll + "/{name}") + _ld(2, item))  # NamedPathItem{name, value}
        paths += _ld(1, _s(1, coll) + _ld(2, _ld(4, _v2_operation(r, params))))  # post
    info = _s(1, "Kubernetes") + _s(3, "v1.34.0-kubeemu")  # Info{title, version}
    return _s(1, "2.0") + _ld(2, info) + _ld(8, paths)  # Document{swagger, info, paths}
