"""Fresh virtual environments for the packaging tests: jobwire installed from a wheel, as a user
installs it, with its dependencies from the wheelhouse `make install` downloads
(`.venv/wheelhouse`: every runtime dependency pinned by requirements.lock, and setuptools), so
an install takes seconds and needs no network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "requirements.lock", "src")
"""What a build needs from the repository (the Dockerfile's builder stage copies the same)."""


def wheelhouse() -> Path:
    if not any(WHEELHOUSE.glob("*.whl")):
        raise AssertionError(f"no wheels in {WHEELHOUSE}: run `make install` (it downloads them)")
    return WHEELHOUSE


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for pip: no index, the wheelhouse only (build isolation included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "JOBWIRE_"))}
    env.update(
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse()),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_CONFIG_FILE=os.devnull,  # the machine's index settings do not apply
        PYTHON=sys.executable,
    )
    env.update(extra)
    return env


def copy_sources(dest: Path, extra: tuple[str, ...] = ()) -> Path:
    """A copy of the build inputs (no caches, no egg-info), so a build leaves nothing in the repo."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in (*SOURCES, *extra):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run(args: list[str | Path], env: dict[str, str] | None = None, timeout: float = 300, **kw: object) -> str:
    """Run a command; its output, or an AssertionError with the output when it fails."""
    proc = subprocess.run(
        [str(a) for a in args],
        env=env if env is not None else offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def make_venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", path])
    return path


def pip_install(venv: Path, *requirements: str) -> str:
    """`pip install -c requirements.lock REQUIREMENTS` into `venv`, offline from the wheelhouse."""
    return run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", REPO / "requirements.lock", *requirements])
