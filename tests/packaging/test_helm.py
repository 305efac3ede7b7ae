"""The Helm chart (deploy/helm/jobwire), rendered by a real Helm engine — Helm's own Go SDK (v4),
through the helm-python-sdk package's bundled library — and every rendered manifest validated
against the Kubernetes API schemas with kubernetes-validate (strict: no unknown fields). The
plain manifests in deploy/kubernetes/ are validated the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from jobwire.config import Settings
from jobwire.jobfile import check_files
from tests.packaging.test_docker import DOCKERFILE, env_of, one, parse
from tests.support.venvs import REPO

CHART = REPO / "deploy" / "helm" / "jobwire"
K8S_VERSION = "1.37.0"
NAMESPACE = "jobs"
TOKEN = {"auth": {"existingSecret": "jobwire-token"}}
JOBS = {
    "jobs.yaml": yaml.safe_dump(
        {
            "jobs": [
                {
                    "name": "nightly-report",
                    "triggers": [{"cron": "30 2 * * *", "timezone": "Europe/Amsterdam"}],
                    "target": {"type": "kubernetes", "image": "registry.example.com/report:1.4", "cpu_request": "500m"},
                }
            ]
        }
    )
}
EVERYTHING = {
    "auth": {"token": "not-a-real-token"},
    "store": {"type": "postgres", "postgres": {"existingSecret": "jobwire-db"}},
    "jobs": {"files": JOBS, "reload": True},
    "config": {"log_level": "debug", "sinks": [{"type": "webhook", "url": "https://hooks.example.com/jobwire"}]},
    "env": {"BUCKET_NAME": "uploads", "SQS_QUEUE_NAME": "uploads-events"},
    "envFrom": [{"secretRef": {"name": "jobwire-broker"}}],
    "kubernetes": {"jobNamespace": "batch"},
    "rbac": {"extraNamespaces": ["gpu"]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
}
CASES: dict[str, dict[str, Any]] = {
    "defaults": TOKEN,
    "sqlite-emptydir": {**TOKEN, "store": {"sqlite": {"persistence": {"enabled": False}}}},
    "sqlite-existing-claim": {**TOKEN, "store": {"sqlite": {"persistence": {"existingClaim": "mine"}}}},
    "postgres-everything": EVERYTHING,
}


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values, name="jw", namespace=NAMESPACE, is_install=True)


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = []
    for name, text in render(values).items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_the_engine_is_helm() -> None:
    assert helm.helm_sdk_version().startswith("v4.")


def test_lint_clean() -> None:
    for values in CASES.values():
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        assert report["errors"] == []
        # severity 1 is INFO ("icon is recommended"); nothing at WARNING or ERROR
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", CASES)
def test_rendered_manifests_are_valid(case: str) -> None:
    docs = manifests(CASES[case])
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding"}
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: no schema in kubernetes-validate; checked in test_service_monitor
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    """The validator bites: a misspelt field in the rendered Deployment is an error."""
    (deployment,) = by_kind(manifests(TOKEN), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", sorted((REPO / "deploy" / "kubernetes").glob("*.yaml")), ids=lambda p: p.name)
def test_plain_manifests_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def rules(role: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((json.loads(json.dumps(r, sort_keys=True)) for r in role["rules"]), key=json.dumps)


def test_role_is_deploy_kubernetes_role() -> None:
    plain = yaml.safe_load((REPO / "deploy" / "kubernetes" / "role.yaml").read_text())
    for values, namespaces in ((TOKEN, {NAMESPACE}), (EVERYTHING, {"batch", "gpu"})):
        docs = manifests(values)
        roles = by_kind(docs, "Role")
        assert {r["metadata"]["namespace"] for r in roles} == namespaces
        for role in roles:
            assert rules(role) == rules(plain)
        bindings = by_kind(docs, "RoleBinding")
        assert {b["metadata"]["namespace"] for b in bindings} == namespaces
        (account,) = by_kind(docs, "ServiceAccount")
        for b in bindings:
            assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[0]["metadata"]["name"]}
            assert b["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}]
    assert by_kind(manifests({**TOKEN, "rbac": {"create": False}}), "Role") == []


def test_pod_matches_the_image_and_probes() -> None:
    docs = manifests(TOKEN)
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(docs)
    image = env_of(parse(DOCKERFILE.read_text()), 1)
    e = env(c)
    assert c["args"] == json.loads(one(parse(DOCKERFILE.read_text()), 1, "CMD").args)
    assert c["ports"][0]["containerPort"] == int(image["JOBWIRE_PORT"]) == int(e["JOBWIRE_PORT"])
    assert e["JOBWIRE_DATA_DIR"] == image["JOBWIRE_DATA_DIR"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {image["JOBWIRE_DATA_DIR"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert e["JOBWIRE_API_TOKEN"] == {"secretKeyRef": {"name": "jobwire-token", "key": "api-token"}}
    assert "JOBWIRE_DATABASE_URL" not in e
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # no persistence: an emptyDir and no claim
    docs = manifests(CASES["sqlite-emptydir"])
    assert by_kind(docs, "PersistentVolumeClaim") == []
    (deployment,) = by_kind(docs, "Deployment")
    assert {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["data"] == {"name": "data", "emptyDir": {}}


def test_postgres_store_sources_sinks_and_upgrade_hook() -> None:
    docs = manifests(EVERYTHING)
    e = env(container(docs))
    assert e["JOBWIRE_DATABASE_URL"] == {"secretKeyRef": {"name": "jobwire-db", "key": "database-url"}}
    assert e["BUCKET_NAME"] == "uploads" and e["NAMESPACE"] == "batch"
    assert container(docs)["envFrom"] == [{"secretRef": {"name": "jobwire-broker"}}]
    (secret,) = by_kind(docs, "Secret")
    assert e["JOBWIRE_API_TOKEN"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "api-token"}}
    (hook,) = by_kind(docs, "Job")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (hc,) = hook["spec"]["template"]["spec"]["containers"]
    assert hc["args"] == ["db", "upgrade"] and hc["image"] == container(docs)["image"]
    assert env(hc)["JOBWIRE_DATABASE_URL"] == e["JOBWIRE_DATABASE_URL"]
    assert by_kind(manifests({**EVERYTHING, "store": {**EVERYTHING["store"], "postgres": {"existingSecret": "jobwire-db", "migrateHook": False}}}), "Job") == []


def test_config_and_jobs_load_in_jobwire(tmp_path: Path) -> None:
    """What the chart mounts is what jobwire reads: the settings file and the job files."""
    docs = manifests(EVERYTHING)
    maps = {m["metadata"]["name"]: m for m in by_kind(docs, "ConfigMap")}
    c = container(docs)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    e = env(c)
    config = tmp_path / "config.yaml"
    config.write_text(maps["jw-jobwire-config"]["data"]["config.yaml"])
    assert e["JOBWIRE_CONFIG"] == f"{mounts['config']}/config.yaml"
    settings = Settings(config=config)
    assert settings.log_level == "debug" and settings.sinks[0].type == "webhook"
    assert e["JOBWIRE_JOBS"] == mounts["jobs"]
    folder = tmp_path / "jobs"
    folder.mkdir()
    for name, text in maps["jw-jobwire-jobs"]["data"].items():
        (folder / name).write_text(text)
    jobs, errors, _ = check_files([folder])
    assert errors == [] and [j.name for j in jobs] == ["nightly-report"]


def test_service_monitor() -> None:
    docs = manifests(EVERYTHING)
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    (secret,) = by_kind(docs, "Secret")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": secret["metadata"]["name"], "key": "api-token"}}
    assert by_kind(manifests(TOKEN), "ServiceMonitor") == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "needs an API token"),
        ({**TOKEN, "store": {"type": "postgres"}}, "store.postgres.existingSecret"),
        ({**TOKEN, "store": {"type": "mysql"}}, "store.type must be sqlite or postgres"),
    ],
)
def test_refuses_what_cannot_run(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)
