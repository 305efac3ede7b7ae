"""Name validation, defaulting and the small subset of API validation the emulator enforces."""

from __future__ import annotations

import re
from typing import Any

from .errors import ApiError, invalid
from .resources import ResourceType
from .selectors import selector_from_label_selector_obj

Obj = dict[str, Any]
Cause = tuple[str, str, str]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)

KNOWN_TOP_LEVEL: dict[str, set[str]] = {
    "Job": {"apiVersion", "kind", "metadata", "spec", "status"},
    "CronJob": {"apiVersion", "kind", "metadata", "spec", "status"},
    "Pod": {"apiVersion", "kind", "metadata", "spec", "status"},
    "Namespace": {"apiVersion", "kind", "metadata", "spec", "status"},
    "ConfigMap": {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"},
    "Event": {
        "apiVersion",
        "kind",
        "metadata",
        "involvedObject",
        "reason",
        "message",
        "source",
        "firstTimestamp",
        "lastTimestamp",
        "count",
        "type",
        "eventTime",
        "series",
        "action",
        "related",
        "reportingComponent",
        "reportingInstance",
    },
}
KNOWN_METADATA = {
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
}


def name_causes(rt: ResourceType, name: str) -> list[Cause]:
    if rt.kind == "Namespace":
        if len(name) > 63:
            return [
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": must be no more than 63 characters',
                )
            ]
        if not _DNS1123_LABEL.match(name):
            return [("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {LABEL_MSG}')]
        return []
    if len(name) > 253:
        return [
            (
                "FieldValueInvalid",
                "metadata.name",
                f'Invalid value: "{name}": must be no more than 253 characters',
            )
        ]
    if not _DNS1123_SUBDOMAIN.match(name):
        return [("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {SUBDOMAIN_MSG}')]
    if rt.kind == "Job" and len(name) > 63:
        # the job name becomes the value of the job-name label of its pods
        return [
            (
                "FieldValueInvalid",
                "spec.template.labels",
                f'Invalid value: "{name}": must be no more than 63 characters',
            )
        ]
    return []


JOB_SPEC = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "backoffLimitPerIndex",
    "completionMode",
    "completions",
    "managedBy",
    "manualSelector",
    "maxFailedIndexes",
    "parallelism",
    "podFailurePolicy",
    "podReplacementPolicy",
    "selector",
    "successPolicy",
    "suspend",
    "template",
    "ttlSecondsAfterFinished",
}
CRONJOB_SPEC = {
    "concurrencyPolicy",
    "failedJobsHistoryLimit",
    "jobTemplate",
    "schedule",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "suspend",
    "timeZone",
}
POD_SPEC = {
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "containers",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "hostname",
    "hostnameOverride",
    "imagePullSecrets",
    "initContainers",
    "nodeName",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "restartPolicy",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "terminationGracePeriodSeconds",
    "tolerations",
    "topologySpreadConstraints",
    "volumes",
}
CONTAINER = {
    "args",
    "command",
    "env",
    "envFrom",
    "image",
    "imagePullPolicy",
    "lifecycle",
    "livenessProbe",
    "name",
    "ports",
    "readinessProbe",
    "resizePolicy",
    "resources",
    "restartPolicy",
    "restartPolicyRules",
    "securityContext",
    "startupProbe",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
    "volumeMounts",
    "workingDir",
}


def _unknown(obj: Any, known: set[str], path: str) -> list[str]:
    if not isinstance(obj, dict):
        return []
    return [f'unknown field "{path}{k}"' for k in obj if k not in known]


def _pod_spec_unknown(spec: Any, path: str) -> list[str]:
    out = _unknown(spec, POD_SPEC, path + ".")
    if isinstance(spec, dict):
        for kind in ("containers", "initContainers"):
            for i, c in enumerate(spec.get(kind) or []):
                out += _unknown(c, CONTAINER, f"{path}.{kind}[{i}].")
    return out


def strict_unknown_fields(rt: ResourceType, obj: Obj) -> list[str]:
    unknown = [f'unknown field "{k}"' for k in obj if k not in KNOWN_TOP_LEVEL.get(rt.kind, set(obj))]
    md = obj.get("metadata") or {}
    unknown += [f'unknown field "metadata.{k}"' for k in md if k not in KNOWN_METADATA]
    spec = obj.get("spec")
    if rt.kind == "Job" and isinstance(spec, dict):
        unknown += _unknown(spec, JOB_SPEC, "spec.")
        unknown += _pod_spec_unknown((spec.get("template") or {}).get("spec"), "spec.template.spec")
    elif rt.kind == "CronJob" and isinstance(spec, dict):
        unknown += _unknown(spec, CRONJOB_SPEC, "spec.")
        jt = (spec.get("jobTemplate") or {}).get("spec")
        unknown += _unknown(jt, JOB_SPEC, "spec.jobTemplate.spec.")
        if isinstance(jt, dict):
            tmpl_spec = (jt.get("template") or {}).get("spec")
            unknown += _pod_spec_unknown(tmpl_spec, "spec.jobTemplate.spec.template.spec")
    elif rt.kind == "Pod":
        unknown += _pod_spec_unknown(spec, "spec")
    return unknown


def strict_error(rt: ResourceType, unknown: list[str]) -> ApiError:
    return ApiError(
        400,
        f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: '
        + ", ".join(unknown),
        "BadRequest",
    )


def _validate_pod_spec(spec: Any, path: str, causes: list[Cause]) -> None:
    if not isinstance(spec, dict):
        causes.append(("FieldValueRequired", path, "Required value"))
        return
    containers = spec.get("containers")
    if not containers:
        causes.append(("FieldValueRequired", f"{path}.containers", "Required value"))
        return
    seen: set[str] = set()
    for i, c in enumerate(containers):
        cpath = f"{path}.containers[{i}]"
        name = c.get("name") if isinstance(c, dict) else None
        if not name:
            causes.append(("FieldValueRequired", f"{cpath}.name", "Required value"))
        elif not _DNS1123_LABEL.match(name) or len(name) > 63:
            causes.append(("FieldValueInvalid", f"{cpath}.name", f'Invalid value: "{name}": {LABEL_MSG}'))
        elif name in seen:
            causes.append(("FieldValueDuplicate", f"{cpath}.name", f'Duplicate value: "{name}"'))
        else:
            seen.add(name)
        if isinstance(c, dict) and not c.get("image"):
            causes.append(("FieldValueRequired", f"{cpath}.image", "Required value"))


def _default_container(c: Obj) -> None:
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    image = str(c.get("image", ""))
    c.setdefault(
        "imagePullPolicy",
        "Always" if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] else "IfNotPresent",
    )
    c.setdefault("resources", {})


def default_pod_spec(spec: Obj, restart_default: str = "Always") -> None:
    spec.setdefault("restartPolicy", restart_default)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for c in spec.get("containers") or []:
        if isinstance(c, dict):
            _default_container(c)


def validate_and_default(rt: ResourceType, obj: Obj, creating: bool) -> None:
    """Apply API defaults and raise 422 Invalid for the checks we emulate."""
    md = obj.setdefault("metadata", {})
    name = md.get("name", "")
    causes: list[Cause] = []
    for section in ("labels", "annotations"):
        val = md.get(section)
        if val is not None and (
            not isinstance(val, dict) or not all(isinstance(v, str) for v in val.values())
        ):
            causes.append(
                ("FieldValueInvalid", f"metadata.{section}", "Invalid value: must be a map of strings")
            )
    if rt.kind == "Pod":
        _validate_pod_spec(obj.get("spec"), "spec", causes)
        if not causes:
            default_pod_spec(obj["spec"])
    elif rt.kind == "Job":
        _validate_job(obj, causes, creating)
    elif rt.kind == "CronJob":
        spec = obj.get("spec")
        if not isinstance(spec, dict) or not spec.get("schedule"):
            causes.append(("FieldValueRequired", "spec.schedule", "Required value"))
        else:
            spec.setdefault("concurrencyPolicy", "Allow")
            spec.setdefault("suspend", False)
            spec.setdefault("successfulJobsHistoryLimit", 3)
            spec.setdefault("failedJobsHistoryLimit", 1)
            tmpl = (spec.get("jobTemplate") or {}).get("spec") or {}
            _validate_pod_spec(
                (tmpl.get("template") or {}).get("spec"), "spec.jobTemplate.spec.template.spec", causes
            )
    elif rt.kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        md.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    elif rt.kind == "Event" and not (obj.get("involvedObject") or {}):
        causes.append(("FieldValueRequired", "involvedObject", "Required value"))
    if causes:
        raise invalid(rt.group, rt.kind, name, causes)


def _validate_job(obj: Obj, causes: list[Cause], creating: bool) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(("FieldValueRequired", "spec.template", "Required value"))
        return
    tmpl = spec.get("template")
    if not isinstance(tmpl, dict):
        causes.append(("FieldValueRequired", "spec.template", "Required value"))
        return
    pod_spec = tmpl.get("spec")
    _validate_pod_spec(pod_spec, "spec.template.spec", causes)
    if causes or not isinstance(pod_spec, dict):
        return
    rp = pod_spec.get("restartPolicy")
    if rp not in ("Never", "OnFailure"):
        causes.append(
            (
                "FieldValueNotSupported",
                "spec.template.spec.restartPolicy",
                f'Unsupported value: "{rp or "Always"}": supported values: "OnFailure", "Never"',
            )
        )
        return
    for fld in (
        "backoffLimit",
        "completions",
        "parallelism",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ):
        val = spec.get(fld)
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 0):
            causes.append(
                (
                    "FieldValueInvalid",
                    f"spec.{fld}",
                    f"Invalid value: {val}: must be greater than or equal to 0",
                )
            )
    if spec.get("activeDeadlineSeconds") == 0:
        causes.append(
            ("FieldValueInvalid", "spec.activeDeadlineSeconds", "Invalid value: 0: must be greater than 0")
        )
    if causes:
        return
    default_pod_spec(pod_spec, "Never")
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    md = obj["metadata"]
    uid = md.get("uid", "")
    if creating and not spec.get("manualSelector"):
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        labels = tmpl.setdefault("metadata", {}).setdefault("labels", {})
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": md.get("name", ""),
                "controller-uid": uid,
                "job-name": md.get("name", ""),
            }
        )
    sel = selector_from_label_selector_obj(spec.get("selector"))
    if not sel.matches((tmpl.get("metadata") or {}).get("labels")):
        causes.append(
            (
                "FieldValueInvalid",
                "spec.template.metadata.labels",
                "Invalid value: selector does not match template `labels`",
            )
        )


def check_job_update(old: Obj, new: Obj) -> None:
    """Immutable Job fields (selector, completions, and template unless suspended)."""
    ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
    name = old["metadata"]["name"]
    causes: list[Cause] = []
    if ospec.get("selector") != nspec.get("selector"):
        causes.append(("FieldValueInvalid", "spec.selector", "Invalid value: field is immutable"))
    if ospec.get("completions") != nspec.get("completions"):
        causes.append(("FieldValueInvalid", "spec.completions", "Invalid value: field is immutable"))
    if ospec.get("template") != nspec.get("template") and not ospec.get("suspend"):
        causes.append(("FieldValueInvalid", "spec.template", "Invalid value: field is immutable"))
    if causes:
        raise invalid("batch", "Job", name, causes)


def require_dict(value: Any, what: str) -> Obj:
    if not isinstance(value, dict):
        raise ApiError(
            400, f"the body of the request was in an unknown format - {what} must be a JSON object"
        )
    return value
