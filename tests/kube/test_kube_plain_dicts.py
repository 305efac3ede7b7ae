"""Creations and watch events as plain dicts (targets/kubernetes/client.py, watch.py): the same
request body and the same cached objects as lightkube's model round trips gave, without them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from lightkube import ApiError
from lightkube.resources.batch_v1 import Job as KJob

from jobwire.model import Job
from jobwire.model import KubernetesTarget as KubeSpec
from jobwire.targets.kubernetes import build, client
from jobwire.targets.kubernetes.watch import decode_event, slim

from .test_kube_client_slots import offline_config


def run_info() -> build.RunInfo:
    return build.RunInfo(
        job="nightly-etl",
        run_id="r1",
        target_name="r1",
        attempt=1,
        event_id="ev-1",
        params={"day": "2026-12-06"},
        environment="prod",
        created_at=datetime(2026, 12, 6, tzinfo=UTC),
    )


def short_spec() -> KubeSpec:
    job = Job.model_validate(
        {
            "name": "nightly-etl",
            "target": {
                "type": "kubernetes",
                "image": "etl:1",
                "command": ["etl"],
                "args": ["--day", "{{ day }}"],
                "env": {"MODE": "full"},
                "cpu_request": "500m",
                "memory_request": "1Gi",
                "gpu": 1,
                "cpu_limit": 2,
                "service_account": "etl",
                "labels": {"team": "data"},
                "annotations": {"note": "x"},
                "node_selector": {"pool": "batch"},
                "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                "backoff_limit": 2,
                "ttl_seconds_after_finished": 600,
            },
        }
    )
    assert isinstance(job.target, KubeSpec)
    return job.target


TEMPLATE = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": "ingest", "namespace": "default", "labels": {"team": "data"}},
    "spec": {
        "schedule": "0 0 * * *",
        "jobTemplate": {
            "metadata": {"labels": {"tier": "batch"}},
            "spec": {
                "parallelism": 1,
                "template": {
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "containers": [
                            {
                                "name": "ingest",
                                "image": "ingest:2",
                                "env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                "resources": {"limits": {"memory": "256Mi"}},
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    }
                },
            },
        },
    },
}


class Sent(Exception):
    pass


@pytest.mark.parametrize("which", ["short spec", "template"])
async def test_a_create_sends_the_body_lightkubes_model_did(monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    if which == "short spec":
        manifest = build.from_short_spec(short_spec(), run_info())
    else:
        spec = Job.model_validate({"name": "nightly-etl", "target": {"type": "kubernetes", "template": "ingest"}})
        assert isinstance(spec.target, KubeSpec)
        manifest = build.from_template(TEMPLATE, spec.target, run_info())
    requests = []

    async def send(generic: Any, request: Any, stream: bool = False) -> Any:
        requests.append(request)
        raise Sent

    monkeypatch.setattr(client, "_send", send)
    kube = client.Kube(offline_config())
    kube.wire = None  # the httpx path; the wire's request is compared with it in test_kube_wire.py
    try:
        with pytest.raises(Sent):
            await kube.create_job("batch-ns", manifest)
    finally:
        await kube.close()
    (request,) = requests
    assert request.method == "POST"
    assert request.url.path == "/apis/batch/v1/namespaces/batch-ns/jobs"
    assert dict(request.url.params) == {"fieldManager": "jobwire"}
    assert request.headers["content-type"] == "application/json"
    # what lightkube sent before: the manifest through its Job model, in the namespace
    model = KJob.from_dict({**manifest, "metadata": {**manifest["metadata"], "namespace": "batch-ns"}})
    assert json.loads(request.content) == json.loads(msgspec.json.encode(model))


def full_job(rv: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "etl-1",
            "namespace": "default",
            "resourceVersion": rv,
            "labels": {"jobwire.io/run": "r1"},
            "managedFields": [{"manager": "jobwire", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x", "env": [{"name": "A"}]}]}}},
        "status": {
            "active": 1,
            "startTime": "2026-12-06T00:00:00Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": None}],
        },
    }


def test_a_watch_event_decodes_to_what_the_cache_kept() -> None:
    obj = full_job("7")
    line = json.dumps({"type": "MODIFIED", "object": obj})
    ev_type, got = decode_event(line)
    assert ev_type == "MODIFIED"
    assert got == slim(obj)
    assert "spec" not in got and "managedFields" not in got["metadata"]
    assert got["status"]["startTime"] == "2026-12-06T00:00:00Z"
    assert slim(got) is got  # the cache does not copy it again


def test_an_object_without_status_has_none() -> None:
    obj = full_job("8")
    del obj["status"]
    assert decode_event(json.dumps({"type": "ADDED", "object": obj}))[1] == slim(obj)


def test_an_error_event_raises_the_api_status() -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1 (5)",
        "reason": "Expired",
        "code": 410,
    }
    with pytest.raises(ApiError) as err:
        decode_event(json.dumps({"type": "ERROR", "object": status}))
    assert err.value.status.code == 410 and err.value.status.reason == "Expired"
