"""Pure functions: a run's Job manifest (from a template or the short spec), its name and labels,
and how a Job's status maps to jobwire's. No I/O: everything here is unit-tested without a cluster.

Naming: `<job slug>-<hash>`, a DNS-1123 label of at most 63 characters. The hash is of the
attempt's target-side name (`ctx.target_name`: the run id, `-N` after the first attempt), so the
name is a pure function of the run key and attempt: a create repeated after a crash meets
AlreadyExists and adopts the Job instead of making a second one.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jobwire.model import KubernetesTarget as KubeSpec
from jobwire.model import StatusBlock
from jobwire.params import param_env, render_argv, render_text

# ---- labels and annotations every Job (and its pods) carries
LABEL_JOB = "jobwire.io/job"
LABEL_RUN = "jobwire.io/run"
LABEL_ATTEMPT = "jobwire.io/attempt"
LABEL_TEMPLATE = "jobwire.io/template"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANN_JOB = "jobwire.io/job-name"
ANN_EVENT = "jobwire.io/event-id"
ANN_ENVIRONMENT = "jobwire.io/environment"
ANN_INPUT = "jobwire.io/input-location"
ANN_TARGET_NAME = "jobwire.io/target-name"
ANN_TEMPLATE = "jobwire.io/template"
ANN_CREATED = "jobwire.io/run-created"
"""When the run was recorded (microseconds): orders Jobs made within one second of each other."""
SELECTOR = LABEL_RUN
"""Label selector of every watch and list jobwire makes: Jobs and pods that belong to a run."""

# labels the Job controller sets; copied from a template they would pin the new Job to the old one
_CONTROLLER_LABELS = (
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "job-name",
    "batch.kubernetes.io/job-name",
)
_META_KEEP = ("labels", "annotations")

MAX_NAME = 63
HASH_LEN = 10
CONTAINER_NAME = "main"
GPU_RESOURCE = "nvidia.com/gpu"
DISK_RESOURCE = "ephemeral-storage"

_LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _hash(text: str, n: int = HASH_LEN) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def slug(text: str, max_len: int) -> str:
    """Lower-case DNS-1123 label characters only, no leading/trailing '-', at most max_len."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    s = re.sub(r"-{2,}", "-", s).strip("-")
    return s[:max_len].rstrip("-") or "job"


def job_name(job: str, target_name: str) -> str:
    """The Job's name for one attempt: deterministic, unique per run and attempt, ≤ 63 chars."""
    return f"{slug(job, MAX_NAME - HASH_LEN - 1)}-{_hash(target_name)}"


def label_value(text: str) -> str:
    """`text` if it is a valid label value, else a readable slug with a hash (still deterministic)."""
    if _LABEL_VALUE_RE.fullmatch(text):
        return text
    return f"{slug(text, MAX_NAME - 9)}-{_hash(text, 8)}"


@dataclass(slots=True)
class RunInfo:
    """What of a run reaches the Job: identity, correlation, and the validated parameters."""

    job: str
    run_id: str
    target_name: str
    attempt: int
    event_id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    environment: str | None = None
    input_location: str | None = None
    callback_url: str | None = None
    callback_token: str = ""
    created_at: datetime | None = None

    @property
    def name(self) -> str:
        return job_name(self.job, self.target_name)


def labels_for(run: RunInfo, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = dict(extra or {})
    out.update(
        {
            LABEL_JOB: label_value(run.job),
            LABEL_RUN: run.run_id,
            LABEL_ATTEMPT: str(run.attempt),
            LABEL_MANAGED_BY: "jobwire",
        }
    )
    return out


def annotations_for(run: RunInfo, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = dict(extra or {})
    out.update({ANN_JOB: run.job, ANN_EVENT: run.event_id, ANN_TARGET_NAME: run.target_name})
    if run.environment is not None:
        out[ANN_ENVIRONMENT] = run.environment
    if run.input_location is not None:
        out[ANN_INPUT] = run.input_location
    if run.created_at is not None:
        out[ANN_CREATED] = run.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def run_env(run: RunInfo, spec_env: Mapping[str, str]) -> list[dict[str, str]]:
    """The env entries jobwire adds to a container: the target's `env` (rendered), the parameters
    as JOBWIRE_PARAM_<NAME>, and the run's identity. Raises ParamError for an unknown placeholder."""
    env: dict[str, str] = {k: render_text(v, run.params) for k, v in spec_env.items()}
    env.update(param_env(run.params))
    env.update(
        {
            "JOBWIRE_RUN_ID": run.target_name,
            "JOBWIRE_EVENT_ID": run.event_id,
            "JOBWIRE_JOB": run.job,
            "JOBWIRE_ATTEMPT": str(run.attempt),
        }
    )
    if run.callback_url:
        env["JOBWIRE_CALLBACK_URL"] = run.callback_url
        env["JOBWIRE_CALLBACK_TOKEN"] = run.callback_token
    return [{"name": k, "value": v} for k, v in env.items()]


def _merge_env(existing: list[dict[str, Any]] | None, added: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The container's own env, with jobwire's entries replacing any of the same name (appended last,
    so `$(VAR)` references in the template to earlier entries keep working)."""
    names = {e["name"] for e in added}
    kept = [e for e in existing or [] if e.get("name") not in names]
    return kept + [dict(e) for e in added]


def resources(spec: KubeSpec) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for res, key in (("cpu", "cpu"), ("memory", "memory"), ("disk", DISK_RESOURCE)):
        req, lim = getattr(spec, f"{res}_request"), getattr(spec, f"{res}_limit")
        if req is not None:
            requests[key] = req
        if lim is not None:
            limits[key] = lim
    if spec.gpu:
        # an extended resource: Kubernetes requires the limit, and a request equal to it
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.gpu)
    out: dict[str, dict[str, str]] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _manifest(
    run: RunInfo, spec: KubeSpec, job_spec: dict[str, Any], meta: Mapping[str, Any]
) -> dict[str, Any]:
    labels = labels_for(run, {**(meta.get("labels") or {}), **spec.labels})
    labels.pop(LABEL_TEMPLATE, None)
    for k in _CONTROLLER_LABELS:
        labels.pop(k, None)
    annotations = annotations_for(run, {**(meta.get("annotations") or {}), **spec.annotations})
    if spec.backoff_limit is not None:
        job_spec["backoffLimit"] = spec.backoff_limit
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    pod_meta = job_spec["template"].setdefault("metadata", {})
    pod_labels = dict(pod_meta.get("labels") or {})
    for k in (*_CONTROLLER_LABELS, LABEL_TEMPLATE):
        pod_labels.pop(k, None)
    pod_labels.update({**spec.labels, LABEL_JOB: labels[LABEL_JOB], LABEL_RUN: run.run_id})
    pod_meta["labels"] = pod_labels
    pod_meta["annotations"] = {**(pod_meta.get("annotations") or {}), ANN_EVENT: run.event_id}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": run.name, "labels": labels, "annotations": annotations},
        "spec": job_spec,
    }


def from_short_spec(spec: KubeSpec, run: RunInfo) -> dict[str, Any]:
    """A Job from the short spec: one container `main`, restartPolicy Never, backoffLimit 0 unless set."""
    assert spec.image is not None  # checked by the model
    container: dict[str, Any] = {"name": CONTAINER_NAME, "image": spec.image}
    if spec.command is not None:
        container["command"] = list(spec.command)
    if spec.args is not None:
        container["args"] = render_argv(spec.args, run.params)
    container["env"] = run_env(run, spec.env)
    res = resources(spec)
    if res:
        container["resources"] = res
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [{k: v for k, v in t.items() if v is not None} for t in spec.tolerations]
    job_spec: dict[str, Any] = {"backoffLimit": 0, "template": {"spec": pod_spec}}
    return _manifest(run, spec, job_spec, {})


class TemplateError(ValueError):
    """The template object cannot be used (no pod template, no containers)."""


def template_source(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, spec) of the Job a template describes: a CronJob's `jobTemplate`, or a Job's own."""
    kind = obj.get("kind")
    if kind == "CronJob":
        jt = ((obj.get("spec") or {}).get("jobTemplate")) or {}
        meta, spec = jt.get("metadata") or {}, jt.get("spec") or {}
    else:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    return {k: copy.deepcopy(meta[k]) for k in _META_KEEP if meta.get(k)}, copy.deepcopy(dict(spec))


def from_template(template: Mapping[str, Any], spec: KubeSpec, run: RunInfo) -> dict[str, Any]:
    """A Job copied from a template (a CronJob, or a suspended Job labelled jobwire.io/template):
    its spec as it is, minus what ties it to the template Job (selector, controller labels,
    `suspend`), with the run's environment added to every container."""
    meta, job_spec = template_source(template)
    pod = job_spec.get("template") or {}
    containers = (pod.get("spec") or {}).get("containers") or []
    name = (template.get("metadata") or {}).get("name", "?")
    if not containers:
        raise TemplateError(f"template {template.get('kind', 'Job')} {name!r} has no containers")
    for k in ("selector", "manualSelector", "suspend"):
        job_spec.pop(k, None)
    env = run_env(run, spec.env)
    for c in containers:
        c["env"] = _merge_env(c.get("env"), env)
    job_spec["template"] = pod
    annotations = dict(meta.get("annotations") or {})
    annotations[ANN_TEMPLATE] = f"{template.get('kind', 'Job')}/{name}"
    meta["annotations"] = annotations
    return _manifest(run, spec, job_spec, meta)


# --------------------------------------------------------------------------- status


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def status_block(status: Mapping[str, Any] | None) -> StatusBlock:
    """Seed 000's `status`: the JobStatus fields, as they are."""
    st = status or {}
    return StatusBlock(
        active=int(st.get("active") or 0),
        startTime=_time(st.get("startTime")),
        completionTime=_time(st.get("completionTime")),
        failed=int(st.get("failed") or 0),
        succeeded=int(st.get("succeeded") or 0),
    )


def condition(status: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return dict(c)
    return None


def finished(status: Mapping[str, Any] | None) -> str | None:
    """'succeeded' (condition Complete), 'failed' (condition Failed) or None while it runs.
    The interim SuccessCriteriaMet / FailureTarget only announce the end; pods may still be
    terminating, so the run ends with the final condition."""
    if condition(status, "Complete") is not None:
        return "succeeded"
    if condition(status, "Failed") is not None:
        return "failed"
    return None


def finish_time(obj: Mapping[str, Any]) -> datetime | None:
    """When a finished Job finished (completionTime, or its Failed condition), else None."""
    st = obj.get("status") or {}
    if finished(st) is None:
        return None
    done = _time(st.get("completionTime"))
    if done is None:
        cond = condition(st, "Failed") or {}
        done = _time(cond.get("lastTransitionTime"))
    return done or _time((obj.get("metadata") or {}).get("creationTimestamp"))


PULL_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"})
PULL_FATAL = frozenset({"ErrImageNeverPull", "InvalidImageName"})


def pull_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) if a container of the pod waits on its image."""
    st = pod.get("status") or {}
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in PULL_WAITING:
            msg = waiting.get("message") or f"container {cs.get('name')} cannot pull image {cs.get('image')}"
            return str(waiting["reason"]), str(msg)
    return None


def terminated(pod: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """(container, reason, exit code) of the pod's first container that ended badly."""
    st = pod.get("status") or {}
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term and (term.get("exitCode") or 0) != 0:
            return str(cs.get("name")), str(term.get("reason") or "Error"), int(term.get("exitCode") or 0)
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def age_key(obj: Mapping[str, Any]) -> tuple[datetime, str]:
    """Sort key, oldest first: jobwire's run-created annotation (microseconds), else the
    creationTimestamp (whole seconds only), then the name."""
    md = obj.get("metadata") or {}
    annotations = md.get("annotations") or {}
    when = _time(annotations.get(ANN_CREATED)) or _time(md.get("creationTimestamp")) or _EPOCH
    return when, str(md.get("name", ""))


def newest(objs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recently created object."""
    return max(objs, key=age_key) if objs else None
