"""Server-side printing (``Accept: application/json;as=Table;g=meta.k8s.io;v=v1``) used by ``kubectl get``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]


def age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    start = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    secs = int((dt.datetime.now(dt.UTC) - start).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _col(name: str, typ: str = "string", fmt: str = "", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": typ, "format": fmt, "description": name, "priority": priority}


def _job_status(o: Obj) -> str:
    conds = {c.get("type"): c.get("status") for c in (o.get("status") or {}).get("conditions") or []}
    if conds.get("Complete") == "True":
        return "Complete"
    if conds.get("Failed") == "True":
        return "Failed"
    if conds.get("Suspended") == "True":
        return "Suspended"
    return "Running"


def _row(rt: ResourceType, o: Obj) -> list[Any]:
    md, st, spec = o.get("metadata") or {}, o.get("status") or {}, o.get("spec") or {}
    created = md.get("creationTimestamp")
    if rt.kind == "Pod":
        cs = st.get("containerStatuses") or []
        ready = sum(1 for c in cs if c.get("ready"))
        restarts = sum(int(c.get("restartCount", 0)) for c in cs)
        reason = st.get("phase", "Pending")
        for c in cs:
            w = (c.get("state") or {}).get("waiting")
            t = (c.get("state") or {}).get("terminated")
            if w and w.get("reason"):
                reason = w["reason"]
            elif t and t.get("reason"):
                reason = t["reason"]
        if md.get("deletionTimestamp"):
            reason = "Terminating"
        return [
            md.get("name"),
            f"{ready}/{len(spec.get('containers') or [])}",
            reason,
            restarts,
            age(created),
        ]
    if rt.kind == "Job":
        return [
            md.get("name"),
            _job_status(o),
            f"{st.get('succeeded', 0)}/{spec.get('completions', 1)}",
            _duration(st),
            age(created),
        ]
    if rt.kind == "CronJob":
        return [
            md.get("name"),
            spec.get("schedule"),
            spec.get("timeZone") or "<none>",
            spec.get("suspend", False),
            len(st.get("active") or []),
            age(st.get("lastScheduleTime")) if st.get("lastScheduleTime") else "<none>",
            age(created),
        ]
    if rt.kind == "ConfigMap":
        return [md.get("name"), len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(created)]
    if rt.kind == "Namespace":
        return [md.get("name"), st.get("phase", "Active"), age(created)]
    return [md.get("name"), age(created)]


def _duration(st: Obj) -> str:
    start = st.get("startTime")
    if not start:
        return ""
    end = st.get("completionTime")
    a = dt.datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    b = (
        dt.datetime.strptime(end, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        if end
        else dt.datetime.now(dt.UTC)
    )
    return f"{int((b - a).total_seconds())}s"


COLUMNS: dict[str, list[dict[str, Any]]] = {
    "Pod": [_col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts", "string"), _col("Age")],
    "Job": [_col("Name", fmt="name"), _col("Status"), _col("Completions"), _col("Duration"), _col("Age")],
    "CronJob": [
        _col("Name", fmt="name"),
        _col("Schedule"),
        _col("Timezone"),
        _col("Suspend", "boolean"),
        _col("Active", "integer"),
        _col("Last Schedule"),
        _col("Age"),
    ],
    "ConfigMap": [_col("Name", fmt="name"), _col("Data", "integer"), _col("Age")],
    "Namespace": [_col("Name", fmt="name"), _col("Status"), _col("Age")],
}


def to_table(rt: ResourceType, items: list[Obj], list_meta: dict[str, Any], include: str) -> dict[str, Any]:
    cols = COLUMNS.get(rt.kind, [_col("Name", fmt="name"), _col("Age")])
    rows = []
    for o in items:
        if include == "Object":
            obj: Any = o
        elif include == "None":
            obj = None
        else:
            obj = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata"),
            }
        row: dict[str, Any] = {"cells": _row(rt, o)}
        if obj is not None:
            row["object"] = obj
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": cols,
        "rows": rows,
    }
