"""The Grafana dashboard (deploy/grafana/jobwire.json) queries only metrics `jobwire serve`
really exports, charts every one it exports, and has the shape Grafana imports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import Server
from tests.support.venvs import REPO
from tests.support.waiting import eventually_sync

DASHBOARD = REPO / "deploy" / "grafana" / "jobwire.json"
METRIC = re.compile(r"\bjobwire_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
JOBS = """
jobs:
  - name: hello
    triggers: [api]
    target: {type: local, command: ["echo", "hello"]}
"""


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queried(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Metric name → the panels (or variables) whose PromQL names it."""
    out: dict[str, set[str]] = {}
    for p in panels(dashboard):
        for t in p["targets"]:
            for name in METRIC.findall(t["expr"]):
                out.setdefault(name, set()).add(p["title"])
    for v in dashboard["templating"]["list"]:
        query = v.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        for name in METRIC.findall(text):
            out.setdefault(name, set()).add(f"${v['name']}")
    return out


@pytest.fixture
def scraped(tmp_path: Path, kube_kubeconfig: Path) -> Iterator[dict[str, str]]:
    """`jobwire serve` (with the kubernetes target connected to the emulator, so its cleanup
    metrics exist) after one run: exported family name → its type."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    env = {"JOBWIRE_KUBECONFIG": str(kube_kubeconfig), "JOBWIRE_KUBE_NAMESPACE": "default"}
    with Server(tmp_path / "data", jobs, **env) as srv, srv.client() as c:
        run = c.post("/jobs/hello/runs", json={}).json()
        eventually_sync(lambda: c.get(f"/runs/{run['id']}").json()["state"] == "succeeded", 30, "the run to end")

        def families() -> dict[str, str] | None:
            text = httpx.get(f"{srv.url}/metrics").text
            found = {f.name: f.type for f in text_string_to_metric_families(text)}
            return found if "jobwire_kube_cleanup_sweeps" in found else None

        yield eventually_sync(families, 30, "the kubernetes cleanup's first sweep")


def series_names(families: dict[str, str]) -> set[str]:
    out = set()
    for name, kind in families.items():
        out.add(name)
        out.update(name + s for s in SUFFIXES.get(kind, ()))
    return out


def test_every_query_names_an_exported_metric(dashboard: dict[str, Any], scraped: dict[str, str]) -> None:
    exported = series_names(scraped)
    unknown = {name: sorted(where) for name, where in queried(dashboard).items() if name not in exported}
    assert unknown == {}


def test_every_exported_metric_is_charted(dashboard: dict[str, Any], scraped: dict[str, str]) -> None:
    charted = set(queried(dashboard))
    families = {f: kind for f, kind in scraped.items() if not f.endswith("_created")}  # creation times
    assert len(families) >= 30
    missing = sorted(f for f, kind in families.items() if not (series_names({f: kind}) & charted))
    assert missing == []


def test_histograms_are_queried_by_bucket_sum_or_count(dashboard: dict[str, Any], scraped: dict[str, str]) -> None:
    """`histogram_quantile` needs `_bucket`; a bare histogram name matches no series."""
    histograms = {f for f, kind in scraped.items() if kind == "histogram"}
    assert histograms
    assert [n for n in queried(dashboard) if n in histograms] == []
    for p in panels(dashboard):
        for t in p["targets"]:
            if "histogram_quantile" in t["expr"]:
                assert "_bucket" in t["expr"], p["title"]


def test_grafana_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    boxes = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, a in enumerate(boxes):  # no two panels overlap
        for b in boxes[i + 1 :]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2], (a[0], b[0])
    for p in panels(dashboard):
        assert p["type"] in ("timeseries", "stat") and p["title"] and p["description"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            expr = t["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert METRIC.search(expr), expr
            # every selector is scoped to the chosen instances
            assert all('instance=~"$instance"' in sel for sel in re.findall(r"jobwire_[a-z0-9_]+(\{[^}]*\})?", expr)), expr


def alert_rules() -> list[dict[str, Any]]:
    """The Prometheus rules in docs/operations.md ("Alerts worth setting")."""
    text = (REPO / "docs" / "operations.md").read_text()
    block = re.search(r"```yaml\n(groups:.*?)```", text, re.S)
    assert block is not None
    rules: list[dict[str, Any]] = yaml.safe_load(block[1])["groups"][0]["rules"]
    return rules


def test_documented_alerts_query_exported_metrics(scraped: dict[str, str]) -> None:
    exported = series_names(scraped)
    rules = alert_rules()
    assert len(rules) >= 10 and all(r["alert"] and r["expr"] for r in rules)
    unknown = {r["alert"]: n for r in rules for n in METRIC.findall(r["expr"]) if n not in exported}
    assert unknown == {}
    for r in rules:
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
