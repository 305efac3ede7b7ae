"""The Role in deploy/kubernetes grants exactly what the code calls — checked three ways:

1. the Role's rules equal `API_CALLS`, the table the client module declares;
2. the client module's lightkube calls (read from its source) equal `API_CALLS`, and nothing else in
   the target talks to lightkube directly;
3. a scenario exercising every code path runs against the emulator, and the (resource, verb) of every
   request it served equals `API_CALLS`: an undeclared call, or a declared one the code no longer
   makes, fails the test.
"""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job as KJob
from lightkube.resources.core_v1 import ConfigMap

from jobwire.engine import Engine
from jobwire.model import RunState, utcnow
from jobwire.targets.kubernetes import build
from jobwire.targets.kubernetes.client import API_CALLS
from tests.kube.test_kube_target import bind, finished, kjob, kube_target, log_text, settings, state
from tests.support.kubeemu import KubeEmulator
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "jobwire" / "targets" / "kubernetes"

Call = tuple[str, str, str]


def role_rules() -> set[Call]:
    doc = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "role.yaml").read_text())
    assert doc["kind"] == "Role"
    out: set[Call] = set()
    for rule in doc["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, res, verb))
    return out


def test_role_equals_declared_calls() -> None:
    assert role_rules() == set(API_CALLS)


def test_rolebinding_and_deployment_use_the_service_account() -> None:
    rb = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "rolebinding.yaml").read_text())
    sa = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "serviceaccount.yaml").read_text())
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jobwire"}
    assert rb["subjects"][0]["name"] == sa["metadata"]["name"] == "jobwire"
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "jobwire"


# lightkube method → verb; resource class → (group, plural)
_VERBS = {"create": "create", "get": "get", "list": "list", "watch": "watch", "delete": "delete"}
_RESOURCES = {
    "Job": ("batch", "jobs"),
    "CronJob": ("batch", "cronjobs"),
    "Pod": ("", "pods"),
    "ConfigMap": ("", "configmaps"),
    "Event": ("", "events"),
}


_PLAIN = {"_post": "create", "_watch": "watch"}
"""Kube's own requests without lightkube's models, by the verb they make; the resource class is
their first argument, as in lightkube's calls."""


def test_client_source_calls_equal_declared_calls() -> None:
    tree = ast.parse((PKG / "client.py").read_text())
    found: set[Call] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        method = node.func.attr
        if isinstance(owner, ast.Name) and owner.id == "self" and method in _PLAIN:
            method = _PLAIN[method]  # a request with a plain-dict body or answer: self._post(Job, ...)
        elif not (isinstance(owner, ast.Attribute) and owner.attr in ("client", "stream_client")):
            continue  # only self.client.<method>(...) and self.stream_client.<method>(...)
        if method == "close":
            continue
        if method == "log":
            found.add(("", "pods/log", "get"))
            continue
        assert method in _VERBS, f"unmapped lightkube call self.client.{method}"
        names = {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)} if node.args else set()
        kinds = names & set(_RESOURCES)
        assert len(kinds) == 1, f"cannot tell the resource of self.client.{method}(...) at line {node.lineno}"
        group, plural = _RESOURCES[kinds.pop()]
        found.add((group, plural, _VERBS[method]))
    assert found == set(API_CALLS)
    for path in PKG.glob("*.py"):
        if path.name == "wire.py":
            # its two requests (POST jobs, GET pods/log) are made only by Kube.create_job and
            # Kube.pod_log, whose lightkube fallbacks are counted above
            calls = re.findall(r'\.wire\.request\("(\w+)", path', (PKG / "client.py").read_text())
            assert sorted(calls) == ["GET", "POST"], calls
            continue
        if path.name != "client.py":
            text = path.read_text()
            assert "AsyncClient" not in text and ".client." not in text and "stream_client" not in text, (
                f"{path.name} bypasses Kube"
            )


_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<rest>.+)$")


def to_call(method: str, target: str) -> Call | None:
    parts = urlsplit(target)
    m = _PATH.match(parts.path)
    if m is None:
        return None  # discovery, version: not resource calls
    group = m.group("group") or ""
    segs = m.group("rest").split("/")
    resource = segs[0] if len(segs) < 3 else f"{segs[0]}/{segs[2]}"
    named = len(segs) >= 2
    query = parse_qs(parts.query)
    if method == "GET":
        verb = "get" if named else ("watch" if query.get("watch", [""])[0] in ("1", "true") else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or (
            "delete" if named else "deletecollection"
        )
    return group, resource, verb


async def test_every_call_the_code_makes_is_granted_and_every_grant_is_used(
    kube: KubeEmulator, kube_kubeconfig: Path, tmp_path: Path
) -> None:
    eng = Engine(settings(tmp_path, kube_kubeconfig))
    bind(eng)
    await eng.start()
    client = AsyncClient(KubeConfig.from_file(kube_kubeconfig))
    try:
        # the test's own setup calls are not counted: only what jobwire does from here on
        await client.create(
            KJob.from_dict(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {
                        "name": "tmpl",
                        "namespace": "default",
                        "labels": {build.LABEL_TEMPLATE: "true"},
                    },
                    "spec": {
                        "suspend": True,
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [
                                    {"name": "c", "image": "x", "command": ["sh", "-c", "echo hi"]}
                                ],
                            }
                        },
                    },
                }
            )
        )
        setup = len(kube.control.requests())
        await eng.put_job(
            kjob("tmpl", {"template": "tmpl", "cleanup_min": 0})
        )  # cronjobs get (404), jobs get
        await eng.put_job(kjob("long", {"image": "x:sleep-30"}))
        adm = await eng.trigger("tmpl", {})  # jobs create, list+watch jobs and pods, pods/log get
        assert adm.run is not None
        run = await finished(eng, adm.run.id)
        assert run.state == RunState.succeeded, run.error
        assert "hi" in await log_text(eng, run.id)
        long = await eng.trigger("long", {})
        assert long.run is not None
        await state(eng, long.run.id, RunState.running)
        await eng.cancel(long.run.id)  # jobs delete, events create
        await client.create(
            ConfigMap.from_dict(
                {"metadata": {"name": "cm", "namespace": "default", "labels": {build.LABEL_RUN: run.id}}}
            )
        )
        mark = len(kube.control.requests())
        res = await kube_target(eng).sweep(now=utcnow() + timedelta(hours=9))  # list jobs, configmaps; delete
        assert res.deleted_configmaps == ["cm"]
        await eventually(lambda: kube.control.get("configmaps", "default", "cm") is None, 5, "cm deleted")
    finally:
        await eng.stop()
        await client.close()
    reqs = kube.control.requests()
    # from `setup` on, all but the ConfigMap the test itself created (before `mark`) is jobwire's
    ours = [
        r
        for i, r in enumerate(reqs)
        if i >= setup and not (i < mark and r[0] == "POST" and "/configmaps" in r[1])
    ]
    calls = {c for c in (to_call(m, p) for m, p in ours) if c is not None}
    assert calls - set(API_CALLS) == set(), "calls the Role does not grant"
    assert set(API_CALLS) - calls == set(), "granted but never used by the scenario"
