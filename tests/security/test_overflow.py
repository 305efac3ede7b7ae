"""Huge durations are refused at definition time with a clear error (issue 7 #4): `99999999999w`,
`1e308`, `1e20`, `inf`, `nan` gave a 500 OverflowError after 5-13 s, with /healthz waiting and
crons running late. Every Duration field of the job model is covered, found by walking the model,
so a new field is covered the day it is added."""

from __future__ import annotations

import time
import types
import typing
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from jobwire.model import (
    HttpTarget,
    IntervalTrigger,
    Job,
    KubernetesTarget,
    LocalTarget,
    WebhookTrigger,
    parse_duration,
)
from tests.support.server import Server

HUGE = ["99999999999w", "1e308", 1e308, 1e20, "1e20", "inf", "nan", "-1s", 10**400]
BASE: dict[str, Any] = {
    "name": "big",
    "triggers": [{"type": "interval", "interval": "10s"}],
    "target": {"type": "local", "command": ["true"]},
}


def _is_duration(annotation: Any) -> bool:
    if annotation is timedelta:
        return True
    if typing.get_origin(annotation) is typing.Annotated:
        return _is_duration(typing.get_args(annotation)[0])
    return any(_is_duration(a) for a in typing.get_args(annotation))


def duration_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if _is_duration(ann):
            yield (*prefix, name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and name != "target":
            yield from duration_fields(ann, (*prefix, name))


# where a duration sits and a minimal valid definition around it: the job's own policies, each
# kind of target, each time/webhook trigger (found by walking each model class)
OWNERS: list[tuple[type[BaseModel], tuple[str, ...], dict[str, Any]]] = [
    (Job, (), {}),
    (LocalTarget, ("target",), {"type": "local", "command": ["true"]}),
    (HttpTarget, ("target",), {"type": "http", "url": "https://example.com/x"}),
    (KubernetesTarget, ("target",), {"type": "kubernetes", "image": "busybox"}),
    (IntervalTrigger, ("triggers", "0"), {"type": "interval", "interval": "10s"}),
    (WebhookTrigger, ("triggers", "0"), {"type": "webhook", "secret_env": "X"}),
]


def with_value(path: tuple[str, ...], value: Any, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE with `value` at `path`; `owner`: the minimal target or trigger that holds the field."""
    data: dict[str, Any] = {**BASE, "triggers": [dict(BASE["triggers"][0])], "target": dict(BASE["target"])}
    if owner is not None:
        if path[0] == "target":
            data["target"] = dict(owner)
        else:
            data["triggers"] = [dict(owner)]
    node: Any = data
    for key in path[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[path[-1]] = value
    return data


CASES = sorted(
    {
        ((*prefix, *f), model.__name__): (base or None)
        for model, prefix, base in OWNERS
        for f in duration_fields(model)
        if f[0] != "triggers"
    }.items()
)
PATHS = [path for (path, _), _ in CASES]


def test_the_walk_finds_the_duration_fields() -> None:
    for path in [("timeout",), ("retry", "backoff"), ("retention", "ttl"), ("triggers", "0", "interval"),
                 ("target", "kill_grace"), ("target", "timeout"), ("target", "image_pull_grace")]:
        assert path in PATHS, (path, PATHS)


@pytest.mark.parametrize("value", HUGE, ids=repr)
def test_parse_duration_refuses_huge_values_at_once(value: Any) -> None:
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"at most|expected a duration|negative"):
        parse_duration(value)
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][1]}.{'.'.join(c[0][0])}")
@pytest.mark.parametrize("value", ["99999999999w", 1e308], ids=repr)
def test_every_job_duration_field_is_bounded(case: Any, value: Any) -> None:
    (path, _), owner = case
    with pytest.raises(ValueError) as info:
        Job.model_validate(with_value(path, value, owner))
    assert "at most 3650 days" in str(info.value)
    assert path[-1] in str(info.value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("overflow") / "data").start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("value", ["99999999999w", 1e308, 1e20, "inf"], ids=repr)
def test_api_answers_422_naming_the_field_fast(server: Server, value: Any) -> None:
    data = with_value(("triggers",), [{"type": "interval", "interval": value}])
    t0 = time.monotonic()
    r = httpx.post(server.url + "/api/v1/jobs", json=data, timeout=10)
    assert time.monotonic() - t0 < 2
    assert r.status_code == 422, r.text
    assert "interval" in r.text
    assert httpx.get(server.url + "/healthz", timeout=2).status_code == 200


def test_job_file_error_names_the_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    f = tmp_path / "jobs.yaml"
    f.write_text("jobs:\n  - name: big\n    timeout: 99999999999w\n    target: {type: local, command: [\"true\"]}\n")
    proc = subprocess.run([sys.executable, "-m", "jobwire", "check", str(f)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "timeout" in proc.stdout and "at most 3650 days" in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def _is_number(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is typing.Annotated:
        return _is_number(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_number(a) for a in typing.get_args(annotation))
    return False


def _numeric_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        ann = field.annotation
        if _is_number(ann):
            yield (*prefix, name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and name != "target":
            yield from _numeric_fields(ann, (*prefix, name))


NUMERIC = sorted(
    {
        ((*prefix, *f), model.__name__): (base or None)
        for model, prefix, base in OWNERS
        for f in _numeric_fields(model)
        if f[0] != "triggers"
    }.items()
)


def test_the_walk_finds_the_numeric_fields() -> None:
    paths = {p for (p, _), _ in NUMERIC}
    assert {("retention", "keep"), ("retry", "max_attempts"), ("target", "log_max_bytes")} <= paths, paths


@pytest.mark.parametrize("case", NUMERIC, ids=lambda c: f"{c[0][1]}.{'.'.join(c[0][0])}")
def test_every_number_in_a_job_is_bounded(case: Any) -> None:
    """A number that would feed arithmetic, a loop or an allocation has an upper bound."""
    (path, _), owner = case
    with pytest.raises(ValueError) as info:
        Job.model_validate(with_value(path, 10**30, owner))
    assert path[-1] in str(info.value)
