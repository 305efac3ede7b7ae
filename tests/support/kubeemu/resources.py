"""Static description of the resource types the emulator serves (discovery data)."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS: list[str] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One REST resource (``jobs``, ``pods``...) of one group/version."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = tuple(ALL_VERBS)
    subresources: tuple[str, ...] = ()
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def group_version(self) -> str:
        return self.api_version


RESOURCES: list[ResourceType] = [
    ResourceType(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        namespaced=False,
        short_names=("ns",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
        subresources=("status",),
        status_subresource=True,
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        short_names=("po",),
        categories=("all",),
        subresources=("log", "status"),
        status_subresource=True,
    ),
    ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "events", "event", "Event", short_names=("ev",)),
    ResourceType(
        "batch",
        "v1",
        "jobs",
        "job",
        "Job",
        categories=("all",),
        subresources=("status",),
        status_subresource=True,
    ),
    ResourceType(
        "batch",
        "v1",
        "cronjobs",
        "cronjob",
        "CronJob",
        short_names=("cj",),
        categories=("all",),
        subresources=("status",),
        status_subresource=True,
    ),
]

BY_GV_PLURAL: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
BY_PLURAL: dict[str, ResourceType] = {r.plural: r for r in RESOURCES}
BY_KIND: dict[str, ResourceType] = {r.kind: r for r in RESOURCES}


@dataclass
class GroupVersion:
    group: str
    version: str
    resources: list[ResourceType] = field(default_factory=list)


def group_versions() -> list[GroupVersion]:
    out: dict[tuple[str, str], GroupVersion] = {}
    for r in RESOURCES:
        out.setdefault((r.group, r.version), GroupVersion(r.group, r.version)).resources.append(r)
    return list(out.values())
