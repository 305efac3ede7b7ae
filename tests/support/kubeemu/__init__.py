"""A faithful-on-the-wire Kubernetes API emulator for tests (see docs/kube-emulator.md)."""

from .control import Control
from .server import KubeEmulator

__all__ = ["Control", "KubeEmulator"]
