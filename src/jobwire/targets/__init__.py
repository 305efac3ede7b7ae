"""Targets: where runs execute. `TARGETS` maps a job's `target.type` to its implementation."""

from __future__ import annotations

from jobwire.config import Settings
from jobwire.targets.base import CallbackResult, Outcome, RunContext, Target
from jobwire.targets.http import HttpTarget
from jobwire.targets.kubernetes import KubernetesJobTarget
from jobwire.targets.local import LocalTarget
from jobwire.targets.spot import SpotTarget

TARGETS: dict[str, type[Target]] = {
    "local": LocalTarget,
    "http": HttpTarget,
    "kubernetes": KubernetesJobTarget,
    "spot": SpotTarget,
}


def build_targets(settings: Settings) -> dict[str, Target]:
    """One instance of every target kind (each shares its connections across all runs)."""
    return {kind: cls(settings) for kind, cls in TARGETS.items()}


__all__ = [
    "TARGETS",
    "CallbackResult",
    "HttpTarget",
    "LocalTarget",
    "Outcome",
    "RunContext",
    "SpotTarget",
    "Target",
    "build_targets",
]
