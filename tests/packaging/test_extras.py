"""The pip extras in pyproject.toml and the ones jobwire's plugs name in their errors are the same."""

from __future__ import annotations

import re
import tomllib

from jobwire.plug import EXTRAS
from jobwire.registry import SOURCES, TARGET_EXTRAS
from tests.support.venvs import REPO

OPTIONAL = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def distribution(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return name[0].lower().replace("-", "_")


def test_each_extra_brings_the_libraries_its_plugs_import() -> None:
    integrations = {k: v for k, v in OPTIONAL.items() if k not in ("all", "dev")}
    assert set(integrations) == set(EXTRAS)
    for extra, requirements in integrations.items():
        assert [distribution(r) for r in requirements] == list(EXTRAS[extra]), extra


def test_all_is_every_integration() -> None:
    assert OPTIONAL["all"] == [f"jobwire[{','.join(EXTRAS)}]"]


def test_every_plug_names_an_extra_that_exists() -> None:
    assert {p.extra for p in SOURCES} | set(TARGET_EXTRAS.values()) <= set(EXTRAS)
    assert "lightkube" not in {distribution(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
