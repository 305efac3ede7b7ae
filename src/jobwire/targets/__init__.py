"""Targets: where runs execute. `TARGETS` maps a job's `target.type` to its implementation;
a kind whose client library is a pip extra (`PLUGGED`) is imported only when targets are built,
and stands in as `MissingTarget` (runs fail naming `pip install 'jobwire[<extra>]'`) when that
library is not installed."""

from __future__ import annotations

from jobwire.config import Settings
from jobwire.plug import PlugMissing, load
from jobwire.registry import TARGET_EXTRAS
from jobwire.targets.base import CallbackResult, Outcome, RunContext, Target
from jobwire.targets.http import HttpTarget
from jobwire.targets.local import LocalTarget
from jobwire.targets.missing import MissingTarget
from jobwire.targets.spot import SpotTarget

TARGETS: dict[str, type[Target]] = {
    "local": LocalTarget,
    "http": HttpTarget,
    "spot": SpotTarget,  # imports aiobotocore (the `aws` extra) only when a spot run starts
}
PLUGGED: dict[str, str] = {
    "kubernetes": "jobwire.targets.kubernetes:KubernetesJobTarget",
}
"""Target kinds imported only when targets are built: `module:class` (their extra: `TARGET_EXTRAS`)."""


def target_class(kind: str) -> type[Target]:
    """The implementation of target `kind`; PlugMissing (naming the pip extra) when its client
    library is not installed, KeyError for an unknown kind."""
    if kind in TARGETS:
        return TARGETS[kind]
    cls: type[Target] = load(PLUGGED[kind], f"the {kind} target", TARGET_EXTRAS[kind])
    return cls


def build_targets(settings: Settings) -> dict[str, Target]:
    """One instance of every target kind (each shares its connections across all runs)."""
    out: dict[str, Target] = {}
    for kind in (*TARGETS, *PLUGGED):
        try:
            out[kind] = target_class(kind)(settings)
        except PlugMissing as exc:
            out[kind] = MissingTarget(settings, kind, str(exc))
    return out


__all__ = [
    "PLUGGED",
    "TARGETS",
    "CallbackResult",
    "HttpTarget",
    "LocalTarget",
    "MissingTarget",
    "Outcome",
    "RunContext",
    "SpotTarget",
    "Target",
    "build_targets",
    "target_class",
]
