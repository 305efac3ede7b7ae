"""The emulator's HTTP API exercised directly (httpx) and through lightkube's AsyncClient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.kubeemu import KubeEmulator

JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"
CMS = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kube.url, timeout=10) as client:
        yield client


def job(
    name: str, *, image: str = "busybox", command: list[str] | None = None, **spec: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "test"}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
            **spec,
        },
    }


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": data,
    }


def create(api: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = api.post(path, json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def conditions(obj: dict[str, Any] | None) -> list[str]:
    return [c["type"] for c in ((obj or {}).get("status") or {}).get("conditions") or []]


def wait_job(kube: KubeEmulator, name: str, cond: str, timeout: float = 15) -> dict[str, Any]:
    kube.control.wait_for(lambda c: cond in conditions(c.get("jobs", "default", name)), timeout)
    obj = kube.control.get("jobs", "default", name)
    assert obj is not None
    return obj


def stream(
    api: httpx.Client, path: str, params: dict[str, Any], n: int, timeout: float = 10
) -> list[dict[str, Any]]:
    """Read ``n`` watch events (the read timeout is the deadline)."""
    out: list[dict[str, Any]] = []
    with api.stream("GET", path, params={"watch": "true", **params}, timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["transfer-encoding"] == "chunked"
        for line in r.iter_lines():
            if line:
                out.append(json.loads(line))
            if len(out) >= n:
                break
    return out


def assert_status(r: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json"
    body: dict[str, Any] = r.json()
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == code and body["reason"] == reason and body["message"]
    return body


# --------------------------------------------------------------------------- discovery


def test_discovery_and_version(api: httpx.Client) -> None:
    v = api.get("/version").json()
    assert v["major"] == "1" and v["gitVersion"].startswith("v1.")
    aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    r = api.get("/apis", headers={"Accept": aggregated})
    assert r.headers["content-type"] == "application/json"
    assert r.json()["kind"] == "APIGroupList"
    assert r.json()["groups"][0]["name"] == "batch"
    assert api.get("/api").json()["versions"] == ["v1"]
    names = {res["name"] for res in api.get("/api/v1").json()["resources"]}
    assert {"pods", "pods/log", "pods/status", "namespaces", "configmaps", "events"} <= names
    batch = {res["name"]: res for res in api.get("/apis/batch/v1").json()["resources"]}
    assert batch["jobs"]["namespaced"] is True and "watch" in batch["jobs"]["verbs"]
    assert "jobs/status" in batch and "cronjobs" in batch
    doc = api.get("/openapi/v3/apis/batch/v1").json()
    patch = doc["paths"]["/apis/batch/v1/namespaces/{namespace}/jobs/{name}"]["patch"]
    assert any(p["name"] == "fieldValidation" for p in patch["parameters"])
    assert "apis/batch/v1" in api.get("/openapi/v3").json()["paths"]


# --------------------------------------------------------------------------- CRUD and errors


def test_crud_metadata_and_errors(api: httpx.Client) -> None:
    a = create(api, CMS, cm("a", x="1"))
    b = create(api, CMS, {"metadata": {"generateName": "gen-"}, "data": {}})
    assert b["metadata"]["name"].startswith("gen-") and len(b["metadata"]["name"]) == 9
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"].endswith("Z")
    assert api.get(f"{CMS}/a").json()["data"] == {"x": "1"}
    body = assert_status(api.get(f"{CMS}/nope"), 404, "NotFound")
    assert body["message"] == 'configmaps "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "configmaps"}
    assert_status(api.post(CMS, json=cm("a")), 409, "AlreadyExists")
    stale = {**a, "data": {"x": "2"}}
    updated = api.put(f"{CMS}/a", json=stale)
    assert updated.status_code == 200 and updated.json()["data"] == {"x": "2"}
    assert_status(api.put(f"{CMS}/a", json=stale), 409, "Conflict")
    bad = assert_status(api.post(CMS, json=cm("Bad_Name")), 422, "Invalid")
    assert bad["details"]["causes"][0]["field"] == "metadata.name"
    long_job = assert_status(api.post(JOBS, json=job("j" * 64)), 422, "Invalid")
    assert "63" in long_job["message"]
    no_containers = job("empty")
    no_containers["spec"]["template"]["spec"]["containers"] = []
    r = assert_status(api.post(JOBS, json=no_containers), 422, "Invalid")
    assert "spec.template.spec.containers" in r["message"]
    always = job("always")
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert_status(api.post(JOBS, json=always), 422, "Invalid")
    assert_status(api.post("/api/v1/namespaces/missing/configmaps", json=cm("z")), 404, "NotFound")
    assert_status(
        api.post(f"{JOBS}?fieldValidation=Strict", json={**job("s"), "bogus": 1}), 400, "BadRequest"
    )
    assert_status(api.get("/apis/batch/v1/namespaces/default/widgets"), 404, "NotFound")
    assert api.delete(f"{CMS}/a").status_code == 200
    assert_status(api.delete(f"{CMS}/a"), 404, "NotFound")


def test_namespaces_and_events(api: httpx.Client) -> None:
    names = [n["metadata"]["name"] for n in api.get("/api/v1/namespaces").json()["items"]]
    assert "default" in names
    ns = create(api, "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    assert ns["status"]["phase"] == "Active"
    assert api.get("/api/v1/namespaces/team-a").json()["metadata"]["name"] == "team-a"
    ev = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Job", "name": "x", "namespace": "team-a"},
        "reason": "Started",
        "message": "hi",
        "type": "Normal",
    }
    create(api, "/api/v1/namespaces/team-a/events", ev)
    listed = api.get("/api/v1/events").json()
    assert listed["kind"] == "EventList"
    assert [e["metadata"]["name"] for e in listed["items"]] == ["e1"]
    assert "kind" not in listed["items"][0]  # typed list items carry no TypeMeta, like a real server


# --------------------------------------------------------------------------- selectors and paging


def test_label_and_field_selectors(api: httpx.Client) -> None:
    create(api, CMS, cm("a", {"tier": "web", "env": "prod"}))
    create(api, CMS, cm("b", {"tier": "db", "env": "prod"}))
    create(api, CMS, cm("c", {"tier": "web"}))

    def names(selector: str, field: str = "") -> list[str]:
        params = {"labelSelector": selector, "fieldSelector": field}
        r = api.get(CMS, params=params)
        assert r.status_code == 200, r.text
        return [i["metadata"]["name"] for i in r.json()["items"]]

    assert names("tier=web") == ["a", "c"]
    assert names("tier==web,env=prod") == ["a"]
    assert names("tier!=web") == ["b"]
    assert names("tier in (web, db)") == ["a", "b", "c"]
    assert names("tier notin (web)") == ["b"]
    assert names("env") == ["a", "b"]
    assert names("!env") == ["c"]
    assert names("", "metadata.name=b") == ["b"]
    assert names("", "metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    assert_status(api.get(CMS, params={"labelSelector": "a in (b"}), 400, "BadRequest")
    assert_status(api.get(CMS, params={"fieldSelector": "data.x=1"}), 400, "BadRequest")


def test_pod_phase_field_selector(api: httpx.Client, kube: KubeEmulator) -> None:
    pod = {"metadata": {"name": "stuck"}, "spec": {"containers": [{"name": "c", "image": "x/pull-error:1"}]}}
    create(api, PODS, pod)
    create(
        api,
        PODS,
        {
            "metadata": {"name": "fine"},
            "spec": {"containers": [{"name": "c", "image": "x:1"}], "restartPolicy": "Never"},
        },
    )
    kube.control.wait_for(
        lambda c: (c.get("pods", "default", "fine") or {})["status"]["phase"] == "Succeeded"
    )
    pending = api.get("/api/v1/pods", params={"fieldSelector": "status.phase=Pending"}).json()["items"]
    assert [p["metadata"]["name"] for p in pending] == ["stuck"]
    kube.control.wait_for(
        lambda c: (
            "waiting" in (c.get("pods", "default", "stuck") or {})["status"]["containerStatuses"][0]["state"]
            and c.get("pods", "default", "stuck")["status"]["containerStatuses"][0]["state"]["waiting"][
                "reason"
            ]
            == "ImagePullBackOff"
        )
    )


def test_paging_is_a_consistent_snapshot(api: httpx.Client, kube: KubeEmulator) -> None:
    for i in range(5):
        create(api, CMS, cm(f"cm{i}"))
    first = api.get(CMS, params={"limit": 2}).json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["cm0", "cm1"]
    assert first["metadata"]["remainingItemCount"] == 3
    create(api, CMS, cm("cm10"))  # created after the first page: not part of the snapshot
    api.delete(f"{CMS}/cm3")  # deleted after the first page: still part of the snapshot
    names = []
    token = first["metadata"]["continue"]
    while token:
        page = api.get(CMS, params={"limit": 2, "continue": token}).json()
        names += [i["metadata"]["name"] for i in page["items"]]
        assert page["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        token = page["metadata"].get("continue")
    assert names == ["cm2", "cm3", "cm4"]
    kube.control.compact()
    body = assert_status(
        api.get(CMS, params={"limit": 2, "continue": first["metadata"]["continue"]}), 410, "Expired"
    )
    assert "continue parameter is too old" in body["message"]


def test_deletecollection_by_label(api: httpx.Client) -> None:
    create(api, CMS, cm("a", {"k": "1"}))
    create(api, CMS, cm("b", {"k": "2"}))
    r = api.delete(CMS, params={"labelSelector": "k=1"})
    assert r.status_code == 200 and [i["metadata"]["name"] for i in r.json()["items"]] == ["a"]
    assert [i["metadata"]["name"] for i in api.get(CMS).json()["items"]] == ["b"]


# --------------------------------------------------------------------------- watch


def test_watch_replays_from_resource_version(api: httpx.Client) -> None:
    a = create(api, CMS, cm("a", x="1"))
    rv = a["metadata"]["resourceVersion"]
    api.patch(f"{CMS}/a", json={"data": {"x": "2"}}, headers={"Content-Type": "application/merge-patch+json"})
    create(api, CMS, cm("b"))
    api.delete(f"{CMS}/a")
    events = stream(api, CMS, {"resourceVersion": rv}, 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]
    assert events[0]["object"]["kind"] == "ConfigMap" and events[0]["object"]["data"] == {"x": "2"}
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_without_rv_starts_with_current_state(api: httpx.Client) -> None:
    create(api, CMS, cm("a"))
    create(api, CMS, cm("b"))
    events = stream(api, "/api/v1/configmaps", {}, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_bookmarks(api: httpx.Client) -> None:
    a = create(api, CMS, cm("a"))
    events = stream(
        api,
        CMS,
        {"resourceVersion": a["metadata"]["resourceVersion"], "allowWatchBookmarks": "true"},
        2,
        timeout=5,
    )
    assert [e["type"] for e in events] == ["BOOKMARK", "BOOKMARK"]
    assert events[0]["object"]["kind"] == "ConfigMap"
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) >= int(a["metadata"]["resourceVersion"])


def test_watch_send_initial_events(api: httpx.Client) -> None:
    create(api, CMS, cm("a"))
    create(api, CMS, cm("b"))
    params = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
    }
    events = stream(api, CMS, params, 3)
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    bad = api.get(CMS, params={"watch": "true", "sendInitialEvents": "true"})
    assert_status(bad, 422, "Invalid")


def test_watch_too_old_resource_version_is_410_in_stream(api: httpx.Client, kube: KubeEmulator) -> None:
    a = create(api, CMS, cm("a"))
    create(api, CMS, cm("b"))
    kube.control.compact()
    events = stream(api, CMS, {"resourceVersion": a["metadata"]["resourceVersion"]}, 1)
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
    assert status["message"].startswith("too old resource version:")
    r = api.get(
        CMS, params={"resourceVersion": a["metadata"]["resourceVersion"], "resourceVersionMatch": "Exact"}
    )
    assert_status(r, 410, "Expired")


def test_watch_selectors_and_transitions(api: httpx.Client) -> None:
    a = create(api, CMS, cm("a", {"team": "x"}))
    rv = a["metadata"]["resourceVersion"]
    create(api, CMS, cm("other", {"team": "y"}))
    merge = {"Content-Type": "application/merge-patch+json"}
    api.patch(f"{CMS}/a", json={"metadata": {"labels": {"team": "y"}}}, headers=merge)  # leaves selection
    api.patch(f"{CMS}/other", json={"metadata": {"labels": {"team": "x"}}}, headers=merge)  # enters it
    events = stream(api, CMS, {"resourceVersion": rv, "labelSelector": "team=x"}, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("DELETED", "a"),
        ("ADDED", "other"),
    ]
    only_b = stream(api, CMS, {"resourceVersion": rv, "fieldSelector": "metadata.name=other"}, 2)
    assert [e["type"] for e in only_b] == ["ADDED", "MODIFIED"]


def test_watch_timeout_seconds_ends_stream(api: httpx.Client) -> None:
    with api.stream("GET", CMS, params={"watch": "1", "timeoutSeconds": "1"}, timeout=10) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines == []


def test_drop_watches_breaks_connections(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, CMS, cm("a"))
    with api.stream("GET", CMS, params={"watch": "true"}, timeout=10) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["type"] == "ADDED"
        kube.control.wait_for(lambda c: c.open_watches() == 1)
        assert kube.control.drop_watches() == 1
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in lines:
                pass
    kube.control.wait_for(lambda c: c.open_watches() == 0)


# --------------------------------------------------------------------------- status and patches


def test_status_subresource(api: httpx.Client, kube: KubeEmulator) -> None:
    kube.control.pause_controller()
    j = create(api, JOBS, job("st", suspend=True))
    assert j["status"] == {}
    with_status = {**j, "status": {"active": 5}}
    main = api.put(f"{JOBS}/st", json=with_status).json()
    assert main["status"] == {}  # main resource writes ignore status
    r = api.put(
        f"{JOBS}/st/status",
        json={**main, "spec": {**main["spec"], "parallelism": 9}, "status": {"active": 5}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == {"active": 5} and r.json()["spec"]["parallelism"] == 1
    assert r.json()["metadata"]["generation"] == 1
    p = api.patch(
        f"{JOBS}/st/status",
        json={"status": {"ready": 2}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert p.json()["status"] == {"active": 5, "ready": 2}
    g = api.patch(
        f"{JOBS}/st",
        json={"spec": {"parallelism": 3}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    assert g["metadata"]["generation"] == 2 and g["spec"]["parallelism"] == 3
    assert api.get(f"{JOBS}/st/status").json()["status"]["ready"] == 2


def test_patch_types(api: httpx.Client) -> None:
    create(api, CMS, cm("p", {"a": "1"}, x="1", y="2"))
    merge = api.patch(
        f"{CMS}/p",
        json={"data": {"x": None, "z": "3"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert merge.json()["data"] == {"y": "2", "z": "3"}
    strategic = api.patch(
        f"{CMS}/p",
        json={"metadata": {"labels": {"b": "2"}}},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert strategic.json()["metadata"]["labels"] == {"a": "1", "b": "2"}
    ops = [
        {"op": "replace", "path": "/data/y", "value": "20"},
        {"op": "add", "path": "/data/w", "value": "4"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "test", "path": "/data/z", "value": "3"},
    ]
    jp = api.patch(f"{CMS}/p", json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert jp.status_code == 200, jp.text
    assert jp.json()["data"] == {"y": "20", "z": "3", "w": "4"} and jp.json()["metadata"]["labels"] == {
        "b": "2"
    }
    failed = api.patch(
        f"{CMS}/p",
        json=[{"op": "test", "path": "/data/z", "value": "nope"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert_status(failed, 422, "Invalid")
    stale = api.patch(
        f"{CMS}/p",
        json={"metadata": {"resourceVersion": "1"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert_status(stale, 409, "Conflict")
    rv = jp.json()["metadata"]["resourceVersion"]
    noop = api.patch(
        f"{CMS}/p", json={"data": {"y": "20"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert noop.json()["metadata"]["resourceVersion"] == rv  # no-op writes do not bump resourceVersion
    assert_status(
        api.patch(f"{CMS}/p", content=b"{}", headers={"Content-Type": "text/plain"}),
        415,
        "UnsupportedMediaType",
    )


# --------------------------------------------------------------------------- Job controller


def test_job_runs_local_process_with_env(api: httpx.Client, kube: KubeEmulator) -> None:
    body = job("envy", command=["sh", "-c"])
    c = body["spec"]["template"]["spec"]["containers"][0]
    c["args"] = ['echo "greeting=$GREETING"; echo to-stderr >&2']
    c["env"] = [{"name": "GREETING", "value": "hi"}]
    create(api, JOBS, body)
    done = wait_job(kube, "envy", "Complete")
    assert conditions(done) == ["SuccessCriteriaMet", "Complete"]
    st = done["status"]
    assert st["succeeded"] == 1 and st["ready"] == 0 and st["terminating"] == 0
    assert st["uncountedTerminatedPods"] == {} and st["startTime"] and st["completionTime"]
    for cond in st["conditions"]:
        assert set(cond) == {"type", "status", "reason", "message", "lastProbeTime", "lastTransitionTime"}
        assert cond["status"] == "True"
    [pod] = kube.control.objects("pods", "default")
    labels = pod["metadata"]["labels"]
    uid = done["metadata"]["uid"]
    assert labels["job-name"] == labels["batch.kubernetes.io/job-name"] == "envy"
    assert labels["controller-uid"] == labels["batch.kubernetes.io/controller-uid"] == uid
    assert labels["app"] == "test"
    ref = pod["metadata"]["ownerReferences"][0]
    assert ref == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "envy",
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert pod["metadata"]["name"].startswith("envy-") and len(pod["metadata"]["name"]) == len("envy-") + 5
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    log = api.get(f"{PODS}/{pod['metadata']['name']}/log")
    assert log.status_code == 200 and log.text == "greeting=hi\nto-stderr\n"
    tail = api.get(f"{PODS}/{pod['metadata']['name']}/log", params={"tailLines": 1})
    assert tail.text == "to-stderr\n"
    events = api.get("/api/v1/namespaces/default/events").json()["items"]
    assert {"SuccessfulCreate", "Completed"} <= {e["reason"] for e in events}


def test_backoff_limit_exceeded(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, JOBS, job("flaky", command=["sh", "-c", "exit 3"], backoffLimit=1))
    failed = wait_job(kube, "flaky", "Failed")
    assert conditions(failed) == ["FailureTarget", "Failed"]
    assert [c["reason"] for c in failed["status"]["conditions"]] == ["BackoffLimitExceeded"] * 2
    assert failed["status"]["failed"] == 2 and "active" not in failed["status"]
    pods = kube.control.objects("pods", "default")
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_image_rules(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, JOBS, job("oom", image="app:oom", backoffLimit=0))
    wait_job(kube, "oom", "Failed")
    [pod] = kube.control.objects("pods", "default")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)
    create(api, JOBS, job("ok", image="registry.local/app:v1"))
    wait_job(kube, "ok", "Complete")


def test_active_deadline_seconds(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, JOBS, job("slow", command=["sleep", "30"], activeDeadlineSeconds=1))
    kube.control.wait_for(lambda c: len(c.objects("pods", "default")) == 1)
    failed = wait_job(kube, "slow", "Failed", timeout=15)
    assert [c["reason"] for c in failed["status"]["conditions"]] == ["DeadlineExceeded"] * 2
    assert conditions(failed) == ["FailureTarget", "Failed"]
    kube.control.wait_for(lambda c: not c.objects("pods", "default"), 10)  # the running pod was killed


def test_suspended_job_creates_no_pods(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, JOBS, job("later", suspend=True))
    kube.control.wait_for(lambda c: "Suspended" in conditions(c.get("jobs", "default", "later")))
    assert kube.control.objects("pods") == []
    api.patch(
        f"{JOBS}/later",
        json={"spec": {"suspend": False}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    wait_job(kube, "later", "Complete")


def test_ttl_seconds_after_finished(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, JOBS, job("brief", ttlSecondsAfterFinished=0))
    kube.control.wait_for(lambda c: not c.objects("jobs") and not c.objects("pods"), 10)


def test_pause_and_resume_controller(api: httpx.Client, kube: KubeEmulator) -> None:
    kube.control.pause_controller()
    create(api, JOBS, job("held"))
    create(api, CMS, cm("marker"))  # the store keeps moving while the controller is paused
    assert kube.control.objects("pods") == []
    kube.control.resume_controller()
    wait_job(kube, "held", "Complete")


@pytest.mark.parametrize(
    ("policy", "pods_left", "owner_refs"),
    [("Background", 0, None), ("Foreground", 0, None), ("Orphan", 1, False), (None, 1, False)],
)
def test_delete_propagation(
    api: httpx.Client, kube: KubeEmulator, policy: str | None, pods_left: int, owner_refs: bool | None
) -> None:
    create(api, JOBS, job("owner", command=["sleep", "30"]))
    kube.control.wait_for(
        lambda c: (c.get("jobs", "default", "owner") or {}).get("status", {}).get("ready") == 1
    )
    body = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if policy is not None:
        body["propagationPolicy"] = policy
    r = api.request("DELETE", f"{JOBS}/owner", json=body)
    assert r.status_code in (200, 202), r.text
    kube.control.wait_for(lambda c: not c.objects("jobs") and len(c.objects("pods")) == pods_left, 15)
    if pods_left:
        [pod] = kube.control.objects("pods")
        assert "ownerReferences" not in pod["metadata"]
        api.delete(f"{PODS}/{pod['metadata']['name']}", params={"gracePeriodSeconds": 0})
        kube.control.wait_for(lambda c: not c.objects("pods"))


def test_propagation_policy_in_query(api: httpx.Client, kube: KubeEmulator) -> None:
    create(api, JOBS, job("q"))
    wait_job(kube, "q", "Complete")
    assert api.delete(f"{JOBS}/q", params={"propagationPolicy": "Background"}).status_code == 200
    kube.control.wait_for(lambda c: not c.objects("pods") and not c.objects("jobs"))


def test_log_follow_streams_until_pod_ends(api: httpx.Client, kube: KubeEmulator) -> None:
    kube.control.pause_controller()
    create(api, JOBS, job("talk", command=["sh", "-c", "echo one; read x; echo two"]))
    kube.control.resume_controller()
    kube.control.wait_for(
        lambda c: (c.get("jobs", "default", "talk") or {}).get("status", {}).get("ready") == 1
    )
    [pod] = kube.control.objects("pods", "default")
    name = pod["metadata"]["name"]
    # stdin is /dev/null so `read` returns at once; the stream must still end when the pod ends
    with api.stream("GET", f"{PODS}/{name}/log", params={"follow": "true"}, timeout=10) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert text == "one\ntwo\n"
    r = api.get(f"{PODS}/{name}/log", params={"container": "nope"})
    assert_status(r, 400, "BadRequest")


def test_log_follow_of_sleeping_container(api: httpx.Client, kube: KubeEmulator) -> None:
    create(
        api,
        PODS,
        {
            "metadata": {"name": "sleepy"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "tool:sleep-0.5"}]},
        },
    )
    kube.control.wait_for(
        lambda c: (c.get("pods", "default", "sleepy") or {})["status"].get("phase") == "Running"
    )
    with api.stream(
        "GET", f"{PODS}/sleepy/log", params={"follow": "1", "timestamps": "true"}, timeout=10
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[0].endswith("kubeemu: container c sleeping 0.5s")
    assert lines[-1].endswith("kubeemu: container c ran image tool:sleep-0.5")
    kube.control.wait_for(
        lambda c: (c.get("pods", "default", "sleepy") or {})["status"]["phase"] == "Succeeded"
    )


# --------------------------------------------------------------------------- fault injection


def test_fail_next_requests(api: httpx.Client, kube: KubeEmulator) -> None:
    kube.control.fail_next("create", "jobs", count=2, code=403)
    assert_status(api.post(JOBS, json=job("f")), 403, "Forbidden")
    assert_status(api.post(JOBS, json=job("f")), 403, "Forbidden")
    assert api.post(JOBS, json=job("f")).status_code == 201
    kube.control.fail_next("list", "*", code=500, message="etcd is sad")
    body = assert_status(api.get(CMS), 500, "InternalError")
    assert body["message"] == "etcd is sad"
    assert api.get(CMS).status_code == 200
    kube.control.fail_next("update", "jobs/status", code=422, reason="Invalid")
    j = api.get(f"{JOBS}/f").json()
    assert_status(api.put(f"{JOBS}/f/status", json=j), 422, "Invalid")


def test_token_auth(tmp_path: Path) -> None:
    emu = KubeEmulator(token="s3cret")
    with emu.run_in_thread(), httpx.Client(base_url=emu.url) as client:
        assert_status(client.get("/api/v1/namespaces"), 401, "Unauthorized")
        ok = client.get("/api/v1/namespaces", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        cfg = emu.write_kubeconfig(tmp_path / "kc")
        assert "s3cret" in cfg.read_text() and "current-context: emulator" in cfg.read_text()


# --------------------------------------------------------------------------- lightkube


def _lk_job(name: str, command: list[str]) -> Any:
    from lightkube.models.batch_v1 import JobSpec
    from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.batch_v1 import Job

    return Job(
        metadata=ObjectMeta(name=name, labels={"app": "lk"}),
        spec=JobSpec(
            template=PodTemplateSpec(
                spec=PodSpec(
                    restartPolicy="Never",
                    containers=[Container(name="main", image="busybox", command=command)],
                )
            )
        ),
    )


def _lk_client(kube: KubeEmulator, tmp_path: Path) -> Any:
    from lightkube import AsyncClient, KubeConfig

    return AsyncClient(KubeConfig.from_file(kube.write_kubeconfig(tmp_path / "kc")))


async def test_lightkube_create_and_watch_to_complete(kube: KubeEmulator, tmp_path: Path) -> None:
    import asyncio

    from lightkube.resources.batch_v1 import Job

    client = _lk_client(kube, tmp_path)
    try:
        kube.control.pause_controller()
        created = await client.create(_lk_job("lk", ["sh", "-c", "echo hi"]))
        assert created.metadata.uid
        seen: list[tuple[str, list[str]]] = []
        async with asyncio.timeout(15):
            async for typ, obj in client.watch(Job, namespace="default", labels={"app": "lk"}):
                seen.append((typ, [c.type for c in (obj.status.conditions or [])]))
                if typ == "ADDED":
                    kube.control.resume_controller()
                if "Complete" in seen[-1][1]:
                    break
        assert seen[0] == ("ADDED", [])
        assert all(t == "MODIFIED" for t, _ in seen[1:])
        assert seen[-1][1] == ["SuccessCriteriaMet", "Complete"]
    finally:
        await client.close()


async def test_lightkube_watch_survives_dropped_connection(kube: KubeEmulator, tmp_path: Path) -> None:
    import asyncio

    import httpx2  # lightkube 1.x is built on httpx2, not httpx
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import on_error_retry

    client = _lk_client(kube, tmp_path)
    try:
        await client.create(ConfigMap.from_dict(cm("w", x="1")))
        seen: list[tuple[str, str]] = []
        async with asyncio.timeout(15):
            async for typ, obj in client.watch(ConfigMap, namespace="default", on_error=on_error_retry):
                seen.append((typ, obj.data["x"]))
                if len(seen) == 1:
                    await asyncio.to_thread(kube.control.wait_for, lambda c: c.open_watches() == 1)
                    assert await asyncio.to_thread(kube.control.drop_watches) == 1
                    await client.patch(ConfigMap, "w", {"data": {"x": "2"}}, namespace="default")
                if len(seen) == 2:
                    break
        # it reconnected from the last resourceVersion: no duplicate ADDED, the change was not lost
        assert seen == [("ADDED", "1"), ("MODIFIED", "2")]
        # with the default on_error the transport error surfaces to the caller
        with pytest.raises(httpx2.RemoteProtocolError):
            async with asyncio.timeout(15):
                async for _typ, _obj in client.watch(ConfigMap, namespace="default"):
                    await asyncio.to_thread(kube.control.wait_for, lambda c: c.open_watches() == 1)
                    await asyncio.to_thread(kube.control.drop_watches)
    finally:
        await client.close()


async def test_lightkube_watch_410(kube: KubeEmulator, tmp_path: Path) -> None:
    import asyncio

    from lightkube import ApiError
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import on_error_retry

    client = _lk_client(kube, tmp_path)
    try:
        first = await client.create(ConfigMap.from_dict(cm("a")))
        await client.create(ConfigMap.from_dict(cm("b")))
        await asyncio.to_thread(kube.control.compact)
        with pytest.raises(ApiError) as info:
            async with asyncio.timeout(15):
                async for _ in client.watch(
                    ConfigMap, namespace="default", resource_version=first.metadata.resourceVersion
                ):
                    pass
        assert info.value.status.code == 410 and info.value.status.reason == "Expired"
        # on_error_retry: lightkube drops the resourceVersion and re-watches from the current state
        names: list[tuple[str, str]] = []
        async with asyncio.timeout(15):
            async for typ, obj in client.watch(
                ConfigMap,
                namespace="default",
                on_error=on_error_retry,
                resource_version=first.metadata.resourceVersion,
            ):
                names.append((typ, obj.metadata.name))
                if len(names) == 2:
                    break
        assert names == [("ADDED", "a"), ("ADDED", "b")]
    finally:
        await client.close()


async def test_lightkube_clean_end_and_http_errors_on_watch(kube: KubeEmulator, tmp_path: Path) -> None:
    import asyncio

    import httpx2
    from lightkube import ApiError
    from lightkube.resources.core_v1 import ConfigMap

    client = _lk_client(kube, tmp_path)
    try:
        await client.create(ConfigMap.from_dict(cm("a", x="1")))
        seen: list[tuple[str, str]] = []
        async with asyncio.timeout(15):
            async for typ, obj in client.watch(ConfigMap, namespace="default"):
                seen.append((typ, obj.data["x"]))
                if len(seen) == 1:
                    await asyncio.to_thread(kube.control.wait_for, lambda c: c.open_watches() == 1)
                    assert await asyncio.to_thread(kube.control.end_watches) == 1
                    await client.patch(ConfigMap, "a", {"data": {"x": "2"}}, namespace="default")
                if len(seen) == 2:
                    break
        # a clean end of stream is transparent: lightkube re-watches from the last resourceVersion
        assert seen == [("ADDED", "1"), ("MODIFIED", "2")]
        kube.control.fail_next("watch", "configmaps", code=403)
        with pytest.raises(httpx2.HTTPStatusError) as info:
            async with asyncio.timeout(15):
                async for _ in client.watch(ConfigMap, namespace="default"):
                    pass
        assert info.value.response.status_code == 403
        assert not isinstance(info.value, ApiError)  # a plain HTTPStatusError, not lightkube.ApiError
    finally:
        await client.close()


def _pb(num: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint for ints, length-delimited for bytes."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    if isinstance(payload, int):
        return varint(num << 3) + varint(payload)
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def _pb_job(name: bytes, spec_extra: bytes, container_extra: bytes = b"") -> bytes:
    container = _pb(1, b"main") + _pb(2, b"busybox") + _pb(5, b"") + _pb(16, 0) + container_extra
    pod_spec = _pb(2, container) + _pb(3, b"Never") + _pb(10, b"") + _pb(11, 0)
    spec = _pb(6, _pb(1, _pb(2, b"")) + _pb(2, pod_spec)) + spec_extra
    meta = _pb(1, name) + _pb(2, b"") + _pb(7, 0) + _pb(8, b"")  # Go writes zero values too
    raw = _pb(1, meta) + _pb(2, spec) + _pb(3, _pb(4, 0))
    return b"k8s\x00" + _pb(1, _pb(1, b"batch/v1") + _pb(2, b"Job")) + _pb(2, raw) + _pb(3, b"") + _pb(4, b"")


def test_protobuf_bodies_pointer_zeros_and_unknown_fields(api: httpx.Client) -> None:
    headers = {
        "Content-Type": "application/vnd.kubernetes.protobuf",
        "Accept": "application/vnd.kubernetes.protobuf,application/json",
    }
    # backoffLimit (7) and suspend (10) are pointers in Go: a 0/false on the wire was set on purpose
    r = api.post(JOBS, content=_pb_job(b"pb", _pb(7, 0) + _pb(10, 0)), headers=headers)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"] == "application/json"
    obj = r.json()
    assert obj["spec"]["backoffLimit"] == 0 and obj["spec"]["suspend"] is False
    assert obj["metadata"]["name"] == "pb" and "generateName" not in obj["metadata"]
    [c] = obj["spec"]["template"]["spec"]["containers"]
    assert "workingDir" not in c and "stdin" not in c and "nodeName" not in obj["spec"]["template"]["spec"]
    # a field the emulator does not decode (container ports) is refused, never dropped
    port = _pb(6, _pb(3, 8080))
    r = api.post(JOBS, content=_pb_job(b"pb2", b"", port), headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["reason"] == "UnsupportedMediaType"
    assert "ports (Container field 6)" in r.json()["message"]
    assert api.get(JOBS + "/pb2").status_code == 404
    r = api.post(JOBS, content=b"k8s\x00\xff", headers=headers)
    assert r.status_code == 400 and r.json()["reason"] == "BadRequest"
