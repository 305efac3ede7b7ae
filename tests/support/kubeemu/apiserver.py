"""HTTP routing and REST handlers of the emulated kube-apiserver."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import discovery, errors, openapi, protobuf
from .errors import ApiError
from .http import Request, Response, StreamingResponse
from .patch import apply_patch
from .resources import BY_GV_PLURAL, ResourceType
from .validation import require_dict, strict_error, strict_unknown_fields
from .watch import list_objects, watch_stream

if TYPE_CHECKING:
    from .server import KubeEmulator

log = logging.getLogger("kubeemu")


@dataclass
class Route:
    rt: ResourceType
    namespace: str | None  # None: all namespaces (or cluster-scoped)
    name: str | None
    sub: str | None


def _bool(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "t", "yes")


def _int(value: str | None, what: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f"invalid {what}: {value!r}") from None


class ApiServer:
    def __init__(self, emu: KubeEmulator) -> None:
        self.emu = emu
        self.requests: list[tuple[str, str]] = []

    @property
    def registry(self) -> Any:
        return self.emu.registry

    async def handle(self, req: Request) -> Response | StreamingResponse:
        self.requests.append(
            (
                req.method,
                req.path + ("?" + "&".join(f"{k}={v}" for k, v in req.query.items()) if req.query else ""),
            )
        )
        try:
            if self.emu.token is not None and req.headers.get("authorization") != f"Bearer {self.emu.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return await self._dispatch(req)
        except ApiError as e:
            return Response.json(e.code, e.status())
        except Exception as e:  # pragma: no cover - surfaced as a 500 Status like a real server
            log.exception("internal error handling %s %s", req.method, req.path)
            return Response.json(
                500, errors.status_object(500, f"emulator internal error: {e!r}", "InternalError")
            )

    # ------------------------------------------------------------------ routing
    async def _dispatch(self, req: Request) -> Response | StreamingResponse:
        path = req.path.rstrip("/") or "/"
        static: dict[str, Callable[[], Any]] = {
            "/version": discovery.version,
            "/api": lambda: discovery.api_versions(f"127.0.0.1:{self.emu.port}"),
            "/apis": discovery.api_group_list,
            "/openapi/v3": openapi.index,
        }
        if path in ("/healthz", "/readyz", "/livez"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if path in static:
            if req.method != "GET":
                raise ApiError(
                    405, "the server does not allow this method on the requested resource", "MethodNotAllowed"
                )
            return Response.json(200, static[path]())
        if path == "/openapi/v2":
            if "protobuf" in req.headers.get("accept", ""):
                return Response(200, openapi.v2_protobuf(), openapi.V2_PROTOBUF)
            raise ApiError(406, "only the protobuf form of /openapi/v2 is served", "NotAcceptable")
        if path.startswith("/openapi/v3/"):
            parts = path[len("/openapi/v3/") :].split("/")
            doc = None
            if parts[0] == "api" and len(parts) == 2:
                doc = openapi.document("", parts[1])
            elif parts[0] == "apis" and len(parts) == 3:
                doc = openapi.document(parts[1], parts[2])
            if doc is None:
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return Response.json(200, doc)
        segs = [s for s in path.split("/") if s]
        if segs and segs[0] == "api" and len(segs) >= 2:
            group, version, rest = "", segs[1], segs[2:]
        elif segs and segs[0] == "apis" and len(segs) >= 2:
            if len(segs) == 2:
                doc = discovery.api_group(segs[1])
                if doc is None:
                    raise ApiError(404, "the server could not find the requested resource", "NotFound")
                return Response.json(200, doc)
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        if not rest:
            doc = discovery.api_resource_list(group, version)
            if doc is None:
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return Response.json(200, doc)
        route = self._route(group, version, rest)
        return await self._rest(req, route)

    def _route(self, group: str, version: str, rest: list[str]) -> Route:
        def lookup(plural: str) -> ResourceType:
            rt = BY_GV_PLURAL.get((group, version, plural))
            if rt is None:
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return rt

        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            ns, rest2 = rest[1], rest[2:]
            rt = lookup(rest2[0])
            if not rt.namespaced or len(rest2) > 3:
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
            return Route(rt, ns, rest2[1] if len(rest2) > 1 else None, rest2[2] if len(rest2) > 2 else None)
        rt = lookup(rest[0])
        if len(rest) > 3 or (rt.namespaced and len(rest) > 1):
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        return Route(
            rt,
            None if rt.namespaced else "",
            rest[1] if len(rest) > 1 else None,
            rest[2] if len(rest) > 2 else None,
        )

    # ------------------------------------------------------------------ REST
    async def _rest(self, req: Request, route: Route) -> Response | StreamingResponse:
        rt, m, q = route.rt, req.method, req.query
        resource = rt.plural + (f"/{route.sub}" if route.sub else "")
        if route.sub is not None and route.sub not in rt.subresources:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        watch = _bool(q.get("watch"))
        verb = {
            ("GET", False): "watch" if watch else "list",
            ("GET", True): "get",
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }.get((m, route.name is not None))
        if verb is None or (route.sub == "log" and verb != "get"):
            raise ApiError(
                405, "the server does not allow this method on the requested resource", "MethodNotAllowed"
            )
        self.emu.faults.check(verb, resource)
        ns = route.namespace
        key_ns = (ns or "") if rt.namespaced else ""
        dry_run = "dryRun" in q and q["dryRun"] != ""
        if verb in ("list", "watch"):
            return await self._list_or_watch(req, rt, ns, watch)
        if verb == "get":
            if route.sub == "log":
                assert route.name is not None
                return await self.emu.kubelet.serve_logs(key_ns, route.name, q)
            obj = self.registry.require(rt, key_ns, route.name)
            if "as=Table" in req.headers.get("accept", "") and route.sub is None:
                from .table import to_table

                md = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                return Response.json(200, to_table(rt, [obj], md, q.get("includeObject", "Metadata")))
            return Response.json(200, obj)
        if verb == "create":
            if ns is None and rt.namespaced:
                raise ApiError(
                    405, "the server does not allow this method on the requested resource", "MethodNotAllowed"
                )
            body = self._body(req, rt)
            obj = self.registry.create(rt, key_ns, body, dry_run=dry_run)
            return Response.json(201, obj, self._warnings(req, rt, body))
        assert route.name is not None or verb == "deletecollection"
        if verb == "update":
            body = self._body(req, rt)
            if (body.get("apiVersion"), body.get("kind")) not in ((rt.api_version, rt.kind), (None, None)):
                raise errors.bad_request(
                    f"the API version in the data ({body.get('apiVersion')}) does not match "
                    f"the expected API version ({rt.api_version})"
                )
            obj = self.registry.update(
                rt, key_ns, route.name, body, status=route.sub == "status", dry_run=dry_run
            )
            return Response.json(200, obj)
        if verb == "patch":
            assert route.name is not None
            current = self.registry.require(rt, key_ns, route.name)
            try:
                patch = json.loads(req.body or b"null")
            except ValueError as e:
                raise errors.bad_request(f"error decoding patch: {e}") from None
            patched = apply_patch(req.headers.get("content-type", ""), current, patch)
            if not isinstance(patched, dict):
                raise errors.bad_request("patch produced a non-object")
            rv_given = isinstance(patch, dict) and "resourceVersion" in (patch.get("metadata") or {})
            if isinstance(patch, list):
                rv_given = any(
                    str(op.get("path", "")).startswith("/metadata/resourceVersion") for op in patch
                )
            if q.get("fieldValidation") == "Strict":
                unknown = strict_unknown_fields(rt, patched)
                if unknown:
                    raise strict_error(rt, unknown)
            obj = self.registry.update(
                rt,
                key_ns,
                route.name,
                patched,
                status=route.sub == "status",
                dry_run=dry_run,
                check_rv=rv_given,
            )
            return Response.json(200, obj)
        opts = self._delete_options(req)
        if verb == "delete":
            assert route.name is not None
            obj, done = self.registry.delete(rt, key_ns, route.name, dry_run=dry_run, **opts)
            return Response.json(200 if done else 202, obj)
        # deletecollection
        items, _rv, _ = list_objects(self.emu, rt, ns, q)
        deleted = []
        for item in items:
            md = item["metadata"]
            try:
                obj, _done = self.registry.delete(
                    rt, md.get("namespace", ""), md["name"], dry_run=dry_run, **opts
                )
                deleted.append(obj)
            except ApiError as e:
                if e.code != 404:
                    raise
        return Response.json(
            200,
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.emu.store.rv)},
                "items": deleted,
            },
        )

    def _body(self, req: Request, rt: ResourceType) -> dict[str, Any]:
        ctype = req.headers.get("content-type", "application/json").split(";")[0].strip()
        if ctype == protobuf.CONTENT_TYPE:
            # client-go's typed clientset (kubectl create namespace/job/...) writes protobuf
            body = protobuf.decode_object(req.body)
        elif ctype not in ("application/json", "*/*", ""):
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                f"application/json, application/yaml, {protobuf.CONTENT_TYPE}",
                "UnsupportedMediaType",
            )
        else:
            try:
                body = require_dict(json.loads(req.body or b"null"), "object")
            except ValueError as e:
                raise errors.bad_request(f"the body of the request could not be decoded: {e}") from None
        if body.get("kind") not in (None, rt.kind) or body.get("apiVersion") not in (None, rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                f"API version ({rt.api_version})"
            )
        if req.query.get("fieldValidation") == "Strict":
            unknown = strict_unknown_fields(rt, body)
            if unknown:
                raise strict_error(rt, unknown)
        return body

    def _warnings(self, req: Request, rt: ResourceType, body: dict[str, Any]) -> dict[str, str]:
        if req.query.get("fieldValidation") in (None, "", "Warn"):
            unknown = strict_unknown_fields(rt, body)
            if unknown:
                return {"Warning": f'299 - "{unknown[0]}"'}
        return {}

    def _delete_options(self, req: Request) -> dict[str, Any]:
        q = req.query
        opts: dict[str, Any] = {
            "propagation": q.get("propagationPolicy") or None,
            "grace": _int(q.get("gracePeriodSeconds"), "gracePeriodSeconds"),
            "preconditions": None,
        }
        if _bool(q.get("orphanDependents")) and opts["propagation"] is None:
            opts["propagation"] = "Orphan"
        if req.body.strip():
            try:
                body = json.loads(req.body)
            except ValueError as e:
                raise errors.bad_request(f"invalid DeleteOptions: {e}") from None
            if isinstance(body, dict):
                if body.get("propagationPolicy"):
                    opts["propagation"] = body["propagationPolicy"]
                elif body.get("orphanDependents") is True:
                    opts["propagation"] = "Orphan"
                elif body.get("orphanDependents") is False and opts["propagation"] is None:
                    opts["propagation"] = "Background"
                if body.get("gracePeriodSeconds") is not None:
                    opts["grace"] = int(body["gracePeriodSeconds"])
                opts["preconditions"] = body.get("preconditions")
        return opts

    async def _list_or_watch(
        self, req: Request, rt: ResourceType, ns: str | None, watch: bool
    ) -> Response | StreamingResponse:
        q = req.query
        if watch:
            return StreamingResponse(200, watch_stream(self.emu, rt, ns, q))
        items, rv, cont = list_objects(self.emu, rt, ns, q)
        md: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont is not None:
            md["continue"] = cont[0]
            if cont[1] is not None:
                md["remainingItemCount"] = cont[1]
        if "as=Table" in req.headers.get("accept", ""):
            from .table import to_table

            return Response.json(200, to_table(rt, items, md, q.get("includeObject", "Metadata")))
        return Response.json(
            200,
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": md,
                "items": [_strip_type(i) for i in items],
            },
        )


def _strip_type(obj: dict[str, Any]) -> dict[str, Any]:
    """Items in typed lists carry no apiVersion/kind, like a real server's responses."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


AsyncHandler = Callable[[Request], Awaitable[Response | StreamingResponse]]
