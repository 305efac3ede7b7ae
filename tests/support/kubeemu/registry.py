"""REST semantics on top of the store: create/update/status/delete, finalizers and garbage collection."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
from collections.abc import Callable
from typing import Any

from . import errors
from .errors import ApiError
from .resources import BY_KIND, BY_PLURAL, ResourceType
from .store import Event, Obj, Store, meta, now_iso
from .validation import check_job_update, name_causes, validate_and_default

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVER_SET_META = (
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(n))


def owner_uids(obj: Obj) -> list[str]:
    return [ref.get("uid", "") for ref in (obj.get("metadata") or {}).get("ownerReferences") or []]


class Registry:
    """The emulated API server's storage layer (shared by HTTP handlers and controllers)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # predicate telling whether a pod still has a running container (set by the kubelet)
        self.pod_is_active: Callable[[Obj], bool] = lambda pod: False
        store.listeners.append(self._gc_on_event)
        for ns in DEFAULT_NAMESPACES:
            self.create(
                BY_PLURAL["namespaces"],
                "",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            )

    # ----------------------------------------------------------------- helpers
    def require(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.store.get(rt.plural, namespace, name)
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return obj

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if rt.namespaced and self.store.get("namespaces", "", namespace) is None:
            raise errors.not_found("", "namespaces", namespace)
        if rt.namespaced:
            ns = self.store.get("namespaces", "", namespace)
            if ns is not None and (ns.get("metadata") or {}).get("deletionTimestamp"):
                raise ApiError(
                    403,
                    f'{rt.plural} "{namespace}" is forbidden: unable to create new content in namespace '
                    f"{namespace} because it is being terminated",
                    "Forbidden",
                )

    # ----------------------------------------------------------------- create
    def create(self, rt: ResourceType, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        obj = copy.deepcopy(body)
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        md = meta(obj)
        if rt.namespaced:
            if md.get("namespace") not in (None, "", namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            md["namespace"] = namespace
        else:
            md.pop("namespace", None)
        if not md.get("name"):
            if md.get("generateName"):
                md["name"] = md["generateName"] + random_suffix()
            else:
                raise errors.invalid(
                    rt.group,
                    rt.kind,
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
        name = md["name"]
        causes = name_causes(rt, name)
        if causes:
            raise errors.invalid(rt.group, rt.kind, name, causes)
        self._check_namespace(rt, namespace)
        for k in (*SERVER_SET_META, "resourceVersion", "selfLink"):
            md.pop(k, None)
        if rt.status_subresource and rt.kind != "Namespace":
            obj.pop("status", None)
        md["uid"] = str(__import__("uuid").uuid4())
        md["creationTimestamp"] = now_iso()
        if rt.kind in ("Job", "CronJob", "Pod"):
            md["generation"] = 1
        validate_and_default(rt, obj, creating=True)
        if rt.kind in ("Job", "CronJob"):
            obj.setdefault("status", {})
        if rt.kind == "Pod":
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        if self.store.get(rt.plural, namespace if rt.namespaced else "", name) is not None:
            raise errors.already_exists(rt.group, rt.plural, name)
        if dry_run:
            return obj
        return self.store.add(rt.plural, obj)

    # ----------------------------------------------------------------- update
    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Obj,
        *,
        status: bool = False,
        dry_run: bool = False,
        check_rv: bool = True,
    ) -> Obj:
        old = self.require(rt, namespace, name)
        new = copy.deepcopy(body)
        md = meta(new)
        if md.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({md.get('name')}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and md.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        rv = md.get("resourceVersion")
        if check_rv and rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name)
        if md.get("uid") not in (None, "", old["metadata"]["uid"]):
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {rt.plural} "{name}": Precondition failed: '
                f"UID in precondition: "
                f"{md.get('uid')}, UID in object meta: {old['metadata']['uid']}",
                "Conflict",
            )
        if status:
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            result["apiVersion"] = rt.api_version
            result["kind"] = rt.kind
            rmd = meta(result)
            rmd["name"] = name
            if rt.namespaced:
                rmd["namespace"] = namespace
            for k in SERVER_SET_META:
                if k in old["metadata"]:
                    rmd[k] = old["metadata"][k]
                else:
                    rmd.pop(k, None)
            if rt.status_subresource:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            validate_and_default(rt, result, creating=False)
            if rt.kind == "Job":
                check_job_update(old, result)
            if "generation" in rmd and result.get("spec") != old.get("spec"):
                rmd["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta(result)["resourceVersion"] = old["metadata"]["resourceVersion"]
        meta(result).pop("selfLink", None)
        if result == old:
            return old  # no-op updates do not bump resourceVersion
        if dry_run:
            return result
        stored = self.store.replace(rt.plural, result)
        self._maybe_finalize(rt, stored)
        return self.store.get(rt.plural, *self._key(rt, stored)) or stored

    @staticmethod
    def _key(rt: ResourceType, obj: Obj) -> tuple[str, str]:
        md = obj["metadata"]
        return (md.get("namespace", "") if rt.namespaced else "", md["name"])

    def mutate(
        self, rt: ResourceType, namespace: str, name: str, fn: Callable[[Obj], None], *, status: bool = False
    ) -> Obj | None:
        """Internal read-modify-write (controllers). Returns None if the object is gone."""
        cur = self.store.get(rt.plural, namespace, name)
        if cur is None:
            return None
        new = copy.deepcopy(cur)
        fn(new)
        if new == cur:
            return cur
        if status:
            return self.update(rt, namespace, name, new, status=True)
        stored = self.store.replace(rt.plural, new)
        self._maybe_finalize(rt, stored)
        return stored

    # ----------------------------------------------------------------- delete
    def dependents(self, uid: str) -> list[tuple[ResourceType, Obj]]:
        out: list[tuple[ResourceType, Obj]] = []
        for plural in ("pods", "jobs"):
            for obj in self.store.iter(plural):
                if uid in owner_uids(obj):
                    out.append((BY_PLURAL[plural], obj))
        return out

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        grace: int | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete; returns (object, deleted_now)."""
        obj = self.require(rt, namespace, name)
        md = obj["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != md["uid"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {rt.plural} "{name}": Precondition failed: '
                f"UID in precondition: {pre['uid']}, UID in object meta: {md['uid']}",
                "Conflict",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != md["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {rt.plural} "{name}": Precondition failed: '
                f"ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object "
                f"meta: {md['resourceVersion']}",
                "Conflict",
            )
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid(
                rt.group,
                rt.kind,
                name,
                [
                    (
                        "FieldValueNotSupported",
                        "propagationPolicy",
                        f'Unsupported value: "{propagation}": supported values: '
                        '"Foreground", "Background", "Orphan"',
                    )
                ],
            )
        if dry_run:
            return obj, False
        if md.get("deletionTimestamp"):
            if rt.kind == "Pod" and grace == 0:
                return self.store.remove(rt.plural, *self._key(rt, obj)), True
            return obj, False
        policy = propagation or ("Orphan" if rt.kind == "Job" else "Background")
        uid = md["uid"]
        if policy == "Orphan":
            for drt, dep in self.dependents(uid):
                self.mutate(drt, *self._key(drt, dep), lambda o: _strip_owner(o, uid))
        elif policy == "Foreground" and self.dependents(uid):

            def mark(o: Obj) -> None:
                m = o["metadata"]
                m["deletionTimestamp"] = now_iso()
                m["deletionGracePeriodSeconds"] = 0
                m["finalizers"] = list(dict.fromkeys([*(m.get("finalizers") or []), "foregroundDeletion"]))

            marked = self.mutate(rt, *self._key(rt, obj), mark)
            for drt, dep in self.dependents(uid):
                self._safe_delete(drt, dep, "Background")
            return marked or obj, False
        if rt.kind == "Pod" and grace != 0 and self.pod_is_active(obj):
            g = (
                grace
                if grace is not None
                else int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
            )

            def graceful(o: Obj) -> None:
                o["metadata"]["deletionTimestamp"] = now_iso()
                o["metadata"]["deletionGracePeriodSeconds"] = g

            return self.mutate(rt, *self._key(rt, obj), graceful) or obj, False
        if md.get("finalizers"):

            def stamp(o: Obj) -> None:
                o["metadata"]["deletionTimestamp"] = now_iso()
                o["metadata"]["deletionGracePeriodSeconds"] = 0

            return self.mutate(rt, *self._key(rt, obj), stamp) or obj, False
        return self.store.remove(rt.plural, *self._key(rt, obj)), True

    def remove_now(self, rt: ResourceType, namespace: str, name: str) -> None:
        if self.store.get(rt.plural, namespace, name) is not None:
            self.store.remove(rt.plural, namespace, name)

    def _safe_delete(self, rt: ResourceType, obj: Obj, policy: str) -> None:
        with contextlib.suppress(ApiError):
            self.delete(rt, *self._key(rt, obj), propagation=policy)

    def _maybe_finalize(self, rt: ResourceType, obj: Obj) -> None:
        md = obj["metadata"]
        if md.get("deletionTimestamp") and not md.get("finalizers") and rt.kind != "Pod":
            self.remove_now(rt, *self._key(rt, obj))

    # ----------------------------------------------------------------- garbage collector
    def _gc_on_event(self, ev: Event) -> None:
        if ev.type != "DELETED":
            return
        asyncio.get_running_loop().call_soon(self._gc_after_delete, ev)

    def _gc_after_delete(self, ev: Event) -> None:
        uid = ev.obj["metadata"]["uid"]
        for drt, dep in self.dependents(uid):
            self._safe_delete(drt, dep, "Background")
        # foreground owners waiting for this dependent
        for ref in (ev.obj.get("metadata") or {}).get("ownerReferences") or []:
            ort = BY_KIND.get(ref.get("kind", ""))
            if ort is None:
                continue
            ns = ev.namespace if ort.namespaced else ""
            owner = self.store.get(ort.plural, ns, ref.get("name", ""))
            if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
                continue
            fins = owner["metadata"].get("finalizers") or []
            if "foregroundDeletion" in fins and not self.dependents(owner["metadata"]["uid"]):
                self.mutate(ort, ns, ref["name"], _drop_foreground)


def _strip_owner(obj: Obj, uid: str) -> None:
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
    if refs:
        obj["metadata"]["ownerReferences"] = refs
    else:
        obj["metadata"].pop("ownerReferences", None)


def _drop_foreground(obj: Obj) -> None:
    fins = [f for f in obj["metadata"].get("finalizers") or [] if f != "foregroundDeletion"]
    if fins:
        obj["metadata"]["finalizers"] = fins
    else:
        obj["metadata"].pop("finalizers", None)
