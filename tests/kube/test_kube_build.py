"""Pure parts of the kubernetes target: naming, labels, template copy, short spec, quantities, status."""

from __future__ import annotations

import re
from decimal import Decimal
from textwrap import dedent
from typing import Any

import pytest
from pydantic import ValidationError

from jobwire.jobfile import JobFileError, load_text
from jobwire.model import Job, KubernetesTarget, StatusBlock
from jobwire.params import ParamError
from jobwire.quantity import QuantityError, parse_quantity
from jobwire.targets.kubernetes import build

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def spec(**kw: Any) -> KubernetesTarget:
    return KubernetesTarget.model_validate({"type": "kubernetes", **kw})


def info(**kw: Any) -> build.RunInfo:
    base: dict[str, Any] = {
        "job": "ingest",
        "run_id": "r0123456789abcdef0123456",
        "target_name": "r0123456789abcdef0123456",
        "attempt": 1,
        "event_id": "ev1",
        "params": {"file": "test/ingest/input.csv"},
        "environment": "test",
        "input_location": "test/ingest/input.csv",
    }
    base.update(kw)
    return build.RunInfo(**base)


# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    "job",
    ["ingest", "Ingest_Daily.v2", "x" * 128, "-weird--name-", "__", "a.b.c", "UPPER", "9lives"],
)
def test_job_names_are_dns_labels_of_at_most_63(job: str) -> None:
    for target_name in ("r" + "a" * 23, "r" + "a" * 23 + "-2", "r" + "b" * 23 + "-17"):
        name = build.job_name(job, target_name)
        assert len(name) <= 63
        assert DNS_LABEL.fullmatch(name), name


def test_job_name_is_deterministic_and_unique_per_run_and_attempt() -> None:
    a1 = build.job_name("ingest", "rabc")
    assert a1 == build.job_name("ingest", "rabc")  # a repeat create meets AlreadyExists
    assert a1.startswith("ingest-")
    names = {build.job_name("ingest", t) for t in ("rabc", "rabc-2", "rabc-3", "rabd")}
    assert len(names) == 4


def test_label_values_are_valid_even_for_long_or_odd_job_names() -> None:
    assert build.label_value("ingest") == "ingest"
    assert build.label_value("Ingest_Daily.v2") == "Ingest_Daily.v2"
    long = build.label_value("x" * 128)
    assert len(long) <= 63 and long == build.label_value("x" * 128)
    assert build.label_value("ends-with-") != "ends-with-"


# --------------------------------------------------------------------------- short spec


def test_short_spec_resources_and_pod_shape() -> None:
    s = spec(
        image="ghcr.io/lab/spikes:1",
        command=["python", "sort.py"],
        args=["--in", "{{file}}"],
        env={"MODE": "fast", "SRC": "s3://bucket/{{file}}"},
        cpu_request="500m",
        memory_request="2Gi",
        gpu=1,
        disk_request="10Gi",
        cpu_limit=2,
        memory_limit="4Gi",
        disk_limit="20Gi",
        service_account="runner",
        node_selector={"gpu": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        active_deadline_seconds=600,
        ttl_seconds_after_finished=3600,
        labels={"team": "lab"},
        annotations={"note": "x"},
    )
    m = build.from_short_spec(s, info())
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    md = m["metadata"]
    assert md["name"] == build.job_name("ingest", info().target_name)
    assert md["labels"][build.LABEL_JOB] == "ingest"
    assert md["labels"][build.LABEL_RUN] == info().run_id
    assert md["labels"]["team"] == "lab"
    assert md["annotations"][build.ANN_EVENT] == "ev1"
    assert md["annotations"][build.ANN_ENVIRONMENT] == "test"
    js = m["spec"]
    assert js["backoffLimit"] == 0
    assert js["activeDeadlineSeconds"] == 600 and js["ttlSecondsAfterFinished"] == 3600
    pod = js["template"]
    assert pod["metadata"]["labels"][build.LABEL_RUN] == info().run_id
    ps = pod["spec"]
    assert ps["restartPolicy"] == "Never"
    assert ps["serviceAccountName"] == "runner"
    assert ps["nodeSelector"] == {"gpu": "a100"}
    assert ps["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (c,) = ps["containers"]
    assert c["image"] == "ghcr.io/lab/spikes:1"
    assert c["command"] == ["python", "sort.py"]
    assert c["args"] == ["--in", "test/ingest/input.csv"]
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi", "ephemeral-storage": "10Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"},
    }
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MODE"] == "fast"
    assert env["SRC"] == "s3://bucket/test/ingest/input.csv"
    assert env["JOBWIRE_PARAM_FILE"] == "test/ingest/input.csv"
    assert env["JOBWIRE_RUN_ID"] == info().target_name and env["JOBWIRE_EVENT_ID"] == "ev1"


def test_a_payload_value_stays_one_argument_and_never_reaches_the_command() -> None:
    evil = "x; rm -rf / $(id) {{file}}"
    m = build.from_short_spec(
        spec(image="busybox", command=["cat"], args=["{{file}}"]), info(params={"file": evil})
    )
    (c,) = m["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["cat"] and c["args"] == [evil]


def test_unknown_placeholder_at_run_time_is_a_param_error() -> None:
    with pytest.raises(ParamError):
        build.from_short_spec(spec(image="busybox", env={"A": "{{nope}}"}), info())


def test_short_spec_without_resources_has_none() -> None:
    m = build.from_short_spec(spec(image="busybox"), info())
    (c,) = m["spec"]["template"]["spec"]["containers"]
    assert "resources" not in c and "command" not in c


# --------------------------------------------------------------------------- template


def cronjob_template() -> dict[str, Any]:
    return {
        "kind": "CronJob",
        "metadata": {"name": "ingest", "labels": {"app": "ingest"}},
        "spec": {
            "schedule": "0 0 * * *",
            "suspend": True,
            "jobTemplate": {
                "metadata": {"labels": {"tier": "batch"}, "annotations": {"owner": "data"}},
                "spec": {
                    "backoffLimit": 2,
                    "template": {
                        "metadata": {"labels": {"app": "ingest"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "worker",
                                    "image": "lab/ingest:3",
                                    "env": [
                                        {"name": "KEEP", "value": "1"},
                                        {"name": "JOBWIRE_PARAM_FILE", "value": "stale"},
                                    ],
                                },
                                {"name": "sidecar", "image": "lab/proxy:1"},
                            ],
                        },
                    },
                },
            },
        },
    }


def test_template_from_cronjob_copies_spec_and_injects_env_in_every_container() -> None:
    m = build.from_template(cronjob_template(), spec(template="ingest", env={"EXTRA": "{{file}}"}), info())
    assert m["metadata"]["labels"]["tier"] == "batch"
    assert m["metadata"]["annotations"]["owner"] == "data"
    assert m["metadata"]["annotations"][build.ANN_TEMPLATE] == "CronJob/ingest"
    assert m["spec"]["backoffLimit"] == 2  # the template's own, unless the target sets one
    worker, sidecar = m["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["KEEP"] == "1"
    assert env["JOBWIRE_PARAM_FILE"] == "test/ingest/input.csv"  # the run's value wins
    assert env["EXTRA"] == "test/ingest/input.csv"
    assert [e["name"] for e in worker["env"]].count("JOBWIRE_PARAM_FILE") == 1
    assert {e["name"] for e in sidecar["env"]} >= {"JOBWIRE_PARAM_FILE", "JOBWIRE_RUN_ID"}


def test_template_from_suspended_job_drops_what_ties_it_to_the_template() -> None:
    tmpl = {
        "kind": "Job",
        "metadata": {
            "name": "ingest",
            "labels": {"jobwire.io/template": "true", "app": "ingest"},
            "uid": "u1",
            "resourceVersion": "5",
        },
        "spec": {
            "suspend": True,
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
            "template": {
                "metadata": {
                    "labels": {
                        "batch.kubernetes.io/controller-uid": "u1",
                        "controller-uid": "u1",
                        "job-name": "ingest",
                        "batch.kubernetes.io/job-name": "ingest",
                        "app": "ingest",
                    }
                },
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
            },
        },
    }
    m = build.from_template(tmpl, spec(template="ingest", backoff_limit=1), info())
    assert "suspend" not in m["spec"] and "selector" not in m["spec"]
    assert m["spec"]["backoffLimit"] == 1
    assert "jobwire.io/template" not in m["metadata"]["labels"]
    assert m["metadata"]["labels"]["app"] == "ingest"
    pod_labels = m["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == {"app": "ingest", build.LABEL_JOB: "ingest", build.LABEL_RUN: info().run_id}
    assert "uid" not in m["metadata"] and "resourceVersion" not in m["metadata"]


def test_template_without_containers_is_refused() -> None:
    with pytest.raises(build.TemplateError, match="no containers"):
        build.from_template(
            {"kind": "Job", "metadata": {"name": "t"}, "spec": {}}, spec(template="t"), info()
        )


# --------------------------------------------------------------------------- definitions and quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1.5Gi", Decimal(1.5 * 2**30)),
        ("512Mi", Decimal(512 * 2**20)),
        ("1e3", Decimal(1000)),
        ("10G", Decimal(10**10)),
        (".5", Decimal("0.5")),
        (3, Decimal(3)),
    ],
)
def test_parse_quantity(text: Any, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["12XB", "1GB", "-1", "", "Mi", "1.5.2", "2 Gi", True, None])
def test_bad_quantities(bad: Any) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)


def test_bad_memory_request_names_the_line_and_field() -> None:
    text = dedent(
        """
        jobs:
          - name: ok
            target: {type: kubernetes, image: busybox}
          - name: train
            target:
              type: kubernetes
              image: busybox
              memory_request: 12XB
        """
    )
    with pytest.raises(JobFileError) as info_:
        load_text(text, "jobs.yaml")
    (err,) = info_.value.errors
    assert err.line == 9
    assert err.path == "jobs[1].target.memory_request"
    assert "12XB" in err.message and "quantity" in err.message


def test_bad_memory_request_error_names_the_job() -> None:
    text = "jobs:\n  - name: train\n    target: {type: kubernetes, image: busybox, memory_request: 12XB}\n"
    with pytest.raises(JobFileError) as info_:
        load_text(text, "jobs.yaml")
    assert "jobs.yaml:3: jobs[0].target.memory_request" in str(info_.value)
    assert "(job 'train')" in str(info_.value)


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ({}, "exactly one of `template`"),
        ({"template": "a", "image": "b"}, "exactly one of `template`"),
        ({"template": "a", "cpu_request": "1"}, "remove cpu_request"),
        (
            {"image": "b", "cpu_request": "2", "cpu_limit": "1"},
            "cpu_request (2) must not be more than cpu_limit",
        ),
        ({"image": "b", "gpu": -1}, "greater than or equal to 0"),
        ({"image": "b", "tolerations": [{"key": "a", "bogus": 1}]}, "unknown field"),
        ({"image": "b", "labels": {"jobwire.io/run": "x"}}, "set by jobwire"),
        ({"image": "b", "namespace": "Bad_NS"}, "namespace"),
        ({"image": "b", "image_pull_grace": "soon"}, "duration"),
    ],
)
def test_definition_errors(target: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info_:
        Job.model_validate({"name": "j", "target": {"type": "kubernetes", **target}})
    assert needle in str(info_.value)


def test_placeholders_only_in_env_and_args() -> None:
    text = dedent(
        """
        jobs:
          - name: j
            parameters: [{name: f}]
            target: {type: kubernetes, image: "busybox:{{f}}", env: {A: "{{f}}"}, args: ["{{f}}"]}
        """
    )
    with pytest.raises(JobFileError) as info_:
        load_text(text, "jobs.yaml")
    assert [e.path for e in info_.value.errors] == ["jobs[0].target.image"]


def test_defaults() -> None:
    s = spec(image="busybox")
    assert s.backoff_limit is None and s.image_pull_grace.total_seconds() == 300
    assert s.namespace is None and s.cleanup_min is None and s.cleanup_ttl is None


# --------------------------------------------------------------------------- status mapping


def test_status_block_and_terminal_conditions() -> None:
    st = {
        "active": 1,
        "startTime": "2019-10-12T07:15:43Z",
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}],
        "succeeded": 1,
    }
    block = build.status_block(st)
    assert block == StatusBlock(active=1, startTime=block.startTime, succeeded=1)
    assert block.startTime is not None and block.startTime.isoformat() == "2019-10-12T07:15:43+00:00"
    assert build.finished(st) is None  # interim condition: pods may still be terminating
    st["conditions"].append({"type": "Complete", "status": "True"})
    assert build.finished(st) == "succeeded"
    assert build.finished({"conditions": [{"type": "FailureTarget", "status": "True"}]}) is None
    assert build.finished({"conditions": [{"type": "Failed", "status": "True"}]}) == "failed"
    assert build.finished({"conditions": [{"type": "Failed", "status": "False"}]}) is None


def test_pod_reasons() -> None:
    pull = {
        "status": {"containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
    }
    assert build.pull_problem(pull) is not None and build.pull_problem(pull)[0] == "ImagePullBackOff"  # type: ignore[index]
    oom = {
        "status": {
            "containerStatuses": [
                {"name": "c", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
            ]
        }
    }
    assert build.terminated(oom) == ("c", "OOMKilled", 137)
    ok = {
        "status": {
            "containerStatuses": [
                {"name": "c", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}
            ]
        }
    }
    assert build.terminated(ok) is None
