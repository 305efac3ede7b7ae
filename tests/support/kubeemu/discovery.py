"""Discovery documents: /version, /api, /apis, /api/v1, /apis/batch/v1 (legacy, non-aggregated)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from .resources import RESOURCES, ResourceType, group_versions

SERVER_VERSION: dict[str, str] = {
    "major": "1",
    "minor": "34",
    "emulationMajor": "1",
    "emulationMinor": "34",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "33",
    "gitVersion": "v1.34.0-kubeemu",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-08-27T00:00:00Z",
    "goVersion": "go1.24.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _hash(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()[:8]).decode()


def version() -> dict[str, str]:
    return dict(SERVER_VERSION)


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(group: str, version: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"name": group, "versions": [gv], "preferredVersion": gv}


def api_group_list() -> dict[str, Any]:
    groups = [_group(gv.group, gv.version) for gv in group_versions() if gv.group]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict[str, Any] | None:
    for gv in group_versions():
        if gv.group == group:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(gv.group, gv.version)}
    return None


def _resource_entries(r: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": list(r.verbs),
    }
    if r.short_names:
        main["shortNames"] = list(r.short_names)
    if r.categories:
        main["categories"] = list(r.categories)
    main["storageVersionHash"] = _hash(f"{r.group}/{r.version}/{r.kind}")
    out = [main]
    for sub in r.subresources:
        entry: dict[str, Any] = {
            "name": f"{r.plural}/{sub}",
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["get", "patch", "update"] if sub == "status" else ["get"],
        }
        out.append(entry)
    return out


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    rs = [r for r in RESOURCES if r.group == group and r.version == version]
    if not rs:
        return None
    resources: list[dict[str, Any]] = []
    for r in rs:
        resources.extend(_resource_entries(r))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
