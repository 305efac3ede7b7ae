"""Decoding of Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``).

client-go's *typed* clientset sends protobuf for built-in kinds, so ``kubectl create namespace``,
``create job``, ``create cronjob`` and ``create configmap`` POST protobuf (``kubectl create -f``, ``get``,
``delete``, ``wait`` use JSON). They all ``Accept: application/vnd.kubernetes.protobuf,application/json``,
so the emulator answers JSON as always.

The body is the 4 bytes ``k8s\\0`` followed by a ``runtime.Unknown`` (``typeMeta``, ``raw``,
``contentEncoding``, ``contentType``); ``raw`` is the object. The field numbers below are those of
``k8s.io/api`` / ``k8s.io/apimachinery`` ``generated.proto``, for the fields these commands (and simple
typed-client writes) use; a field the tables do not know, or a message kind marked ``skip`` that is not
empty, is refused with 415 naming the field, never dropped.

Go's (gogo) protobuf writes every *non-pointer* field, zero values included (``generateName: ""``,
``hostNetwork: false``, an empty ``creationTimestamp``, an empty ``status``); JSON would omit them
(``omitempty``). So zero values are dropped unless the Go field is a pointer (``ptr=True``: then
``backoffLimit: 0`` or ``suspend: false`` was set on purpose and is kept).
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


@dataclass(frozen=True)
class F:
    """One field: JSON name and type.

    ``kind``: ``str``, ``int``, ``bool``, ``bytes``, ``time`` (meta/v1 Time), ``quantity``, ``msg``
    (``msg`` names the message), ``map`` (``msg`` is the value kind: ``str``, ``bytes``, ``quantity``)
    or ``skip`` (not decoded: accepted only when empty)."""

    name: str
    kind: str
    msg: str = ""
    rep: bool = False
    ptr: bool = False


def _fields(*fs: tuple[int, F]) -> dict[int, F]:
    return dict(fs)


STR, INT, BOOL = "str", "int", "bool"

MESSAGES: dict[str, dict[int, F]] = {
    "Unknown": _fields(
        (1, F("typeMeta", "msg", "TypeMeta")),
        (2, F("raw", "bytes")),
        (3, F("contentEncoding", STR)),
        (4, F("contentType", STR)),
    ),
    "TypeMeta": _fields((1, F("apiVersion", STR)), (2, F("kind", STR))),
    "ObjectMeta": _fields(
        (1, F("name", STR)),
        (2, F("generateName", STR)),
        (3, F("namespace", STR)),
        (4, F("selfLink", STR)),
        (5, F("uid", STR)),
        (6, F("resourceVersion", STR)),
        (7, F("generation", INT)),
        (8, F("creationTimestamp", "time")),
        (9, F("deletionTimestamp", "time", ptr=True)),
        (10, F("deletionGracePeriodSeconds", INT, ptr=True)),
        (11, F("labels", "map", STR)),
        (12, F("annotations", "map", STR)),
        (13, F("ownerReferences", "msg", "OwnerReference", rep=True)),
        (14, F("finalizers", STR, rep=True)),
        (17, F("managedFields", "skip", rep=True)),
    ),
    "OwnerReference": _fields(
        (1, F("kind", STR)),
        (3, F("name", STR)),
        (4, F("uid", STR)),
        (5, F("apiVersion", STR)),
        (6, F("controller", BOOL, ptr=True)),
        (7, F("blockOwnerDeletion", BOOL, ptr=True)),
    ),
    "LabelSelector": _fields(
        (1, F("matchLabels", "map", STR)),
        (2, F("matchExpressions", "msg", "LabelSelectorRequirement", rep=True)),
    ),
    "LabelSelectorRequirement": _fields(
        (1, F("key", STR)), (2, F("operator", STR)), (3, F("values", STR, rep=True))
    ),
    # core/v1
    "Namespace": _fields(
        (1, F("metadata", "msg", "ObjectMeta")),
        (2, F("spec", "msg", "NamespaceSpec")),
        (3, F("status", "msg", "NamespaceStatus")),
    ),
    "NamespaceSpec": _fields((1, F("finalizers", STR, rep=True))),
    "NamespaceStatus": _fields((1, F("phase", STR)), (2, F("conditions", "skip", rep=True))),
    "ConfigMap": _fields(
        (1, F("metadata", "msg", "ObjectMeta")),
        (2, F("data", "map", STR)),
        (3, F("binaryData", "map", "bytes")),
        (4, F("immutable", BOOL, ptr=True)),
    ),
    "Pod": _fields(
        (1, F("metadata", "msg", "ObjectMeta")),
        (2, F("spec", "msg", "PodSpec")),
        (3, F("status", "skip")),
    ),
    "PodTemplateSpec": _fields((1, F("metadata", "msg", "ObjectMeta")), (2, F("spec", "msg", "PodSpec"))),
    "PodSpec": _fields(
        (1, F("volumes", "skip", rep=True)),
        (2, F("containers", "msg", "Container", rep=True)),
        (3, F("restartPolicy", STR)),
        (4, F("terminationGracePeriodSeconds", INT, ptr=True)),
        (5, F("activeDeadlineSeconds", INT, ptr=True)),
        (6, F("dnsPolicy", STR)),
        (7, F("nodeSelector", "map", STR)),
        (8, F("serviceAccountName", STR)),
        (9, F("serviceAccount", STR)),
        (10, F("nodeName", STR)),
        (11, F("hostNetwork", BOOL)),
        (12, F("hostPID", BOOL)),
        (13, F("hostIPC", BOOL)),
        (14, F("securityContext", "skip", ptr=True)),
        (15, F("imagePullSecrets", "msg", "LocalObjectReference", rep=True)),
        (16, F("hostname", STR)),
        (17, F("subdomain", STR)),
        (18, F("affinity", "skip", ptr=True)),
        (19, F("schedulerName", STR)),
        (20, F("initContainers", "msg", "Container", rep=True)),
        (21, F("automountServiceAccountToken", BOOL, ptr=True)),
        (22, F("tolerations", "skip", rep=True)),
        (23, F("hostAliases", "skip", rep=True)),
        (24, F("priorityClassName", STR)),
        (25, F("priority", INT, ptr=True)),
        (26, F("dnsConfig", "skip", ptr=True)),
        (27, F("shareProcessNamespace", BOOL, ptr=True)),
        (28, F("readinessGates", "skip", rep=True)),
        (29, F("runtimeClassName", STR, ptr=True)),
        (30, F("enableServiceLinks", BOOL, ptr=True)),
        (31, F("preemptionPolicy", STR, ptr=True)),
        (32, F("overhead", "map", "quantity")),
        (33, F("topologySpreadConstraints", "skip", rep=True)),
        (34, F("ephemeralContainers", "skip", rep=True)),
        (35, F("setHostnameAsFQDN", BOOL, ptr=True)),
        (36, F("os", "skip", ptr=True)),
        (37, F("hostUsers", BOOL, ptr=True)),
        (38, F("schedulingGates", "skip", rep=True)),
        (39, F("resourceClaims", "skip", rep=True)),
        (40, F("resources", "msg", "ResourceRequirements", ptr=True)),
        (41, F("hostnameOverride", STR, ptr=True)),
    ),
    "LocalObjectReference": _fields((1, F("name", STR))),
    "Container": _fields(
        (1, F("name", STR)),
        (2, F("image", STR)),
        (3, F("command", STR, rep=True)),
        (4, F("args", STR, rep=True)),
        (5, F("workingDir", STR)),
        (6, F("ports", "skip", rep=True)),
        (7, F("env", "msg", "EnvVar", rep=True)),
        (8, F("resources", "msg", "ResourceRequirements")),
        (9, F("volumeMounts", "skip", rep=True)),
        (10, F("livenessProbe", "skip", ptr=True)),
        (11, F("readinessProbe", "skip", ptr=True)),
        (12, F("lifecycle", "skip", ptr=True)),
        (13, F("terminationMessagePath", STR)),
        (14, F("imagePullPolicy", STR)),
        (15, F("securityContext", "skip", ptr=True)),
        (16, F("stdin", BOOL)),
        (17, F("stdinOnce", BOOL)),
        (18, F("tty", BOOL)),
        (19, F("envFrom", "skip", rep=True)),
        (20, F("terminationMessagePolicy", STR)),
        (21, F("volumeDevices", "skip", rep=True)),
        (22, F("startupProbe", "skip", ptr=True)),
        (23, F("resizePolicy", "skip", rep=True)),
        (24, F("restartPolicy", STR, ptr=True)),
        (25, F("restartPolicyRules", "skip", rep=True)),
    ),
    "EnvVar": _fields((1, F("name", STR)), (2, F("value", STR)), (3, F("valueFrom", "skip", ptr=True))),
    "ResourceRequirements": _fields(
        (1, F("limits", "map", "quantity")),
        (2, F("requests", "map", "quantity")),
        (3, F("claims", "skip", rep=True)),
    ),
    # batch/v1
    "Job": _fields(
        (1, F("metadata", "msg", "ObjectMeta")),
        (2, F("spec", "msg", "JobSpec")),
        (3, F("status", "skip")),
    ),
    "JobTemplateSpec": _fields((1, F("metadata", "msg", "ObjectMeta")), (2, F("spec", "msg", "JobSpec"))),
    "JobSpec": _fields(
        (1, F("parallelism", INT, ptr=True)),
        (2, F("completions", INT, ptr=True)),
        (3, F("activeDeadlineSeconds", INT, ptr=True)),
        (4, F("selector", "msg", "LabelSelector", ptr=True)),
        (5, F("manualSelector", BOOL, ptr=True)),
        (6, F("template", "msg", "PodTemplateSpec")),
        (7, F("backoffLimit", INT, ptr=True)),
        (8, F("ttlSecondsAfterFinished", INT, ptr=True)),
        (9, F("completionMode", STR, ptr=True)),
        (10, F("suspend", BOOL, ptr=True)),
        (11, F("podFailurePolicy", "skip", ptr=True)),
        (12, F("backoffLimitPerIndex", INT, ptr=True)),
        (13, F("maxFailedIndexes", INT, ptr=True)),
        (14, F("podReplacementPolicy", STR, ptr=True)),
        (15, F("managedBy", STR, ptr=True)),
        (16, F("successPolicy", "skip", ptr=True)),
    ),
    "CronJob": _fields(
        (1, F("metadata", "msg", "ObjectMeta")),
        (2, F("spec", "msg", "CronJobSpec")),
        (3, F("status", "skip")),
    ),
    "CronJobSpec": _fields(
        (1, F("schedule", STR)),
        (2, F("startingDeadlineSeconds", INT, ptr=True)),
        (3, F("concurrencyPolicy", STR)),
        (4, F("suspend", BOOL, ptr=True)),
        (5, F("jobTemplate", "msg", "JobTemplateSpec")),
        (6, F("successfulJobsHistoryLimit", INT, ptr=True)),
        (7, F("failedJobsHistoryLimit", INT, ptr=True)),
        (8, F("timeZone", STR, ptr=True)),
    ),
}

#: Kinds whose protobuf bodies are decoded (``kind`` of the ``runtime.Unknown`` envelope).
KINDS = ("Namespace", "ConfigMap", "Pod", "Job", "CronJob")


def unsupported(message: str) -> ApiError:
    return ApiError(
        415,
        f"kubeemu: {message} - send application/json for this object",
        "UnsupportedMediaType",
    )


def _bad(message: str) -> ApiError:
    return ApiError(400, f"the body of the request could not be decoded: {message}", "BadRequest")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _bad("truncated or overlong protobuf varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def wire_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` for each field: an int for varints, bytes otherwise."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        value: int | bytes
        if wt == 0:
            value, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _bad("truncated protobuf field")
            value, pos = buf[pos : pos + n], pos + n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            if pos + n > len(buf):
                raise _bad("truncated protobuf field")
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise _bad(f"unsupported protobuf wire type {wt}")
        if num == 0:
            raise _bad("protobuf field number 0")
        out.append((num, wt, value))
    return out


def _is_zero(value: int | bytes) -> bool:
    """A Go zero value as gogo writes it: 0, an empty string/bytes, or a message of zero values."""
    if isinstance(value, int):
        return value == 0
    if not value:
        return True
    try:
        return all(_is_zero(v) for _n, wt, v in wire_fields(value) if wt in (0, 2))
    except ApiError:
        return False


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _time(buf: bytes) -> str | None:
    seconds = nanos = 0
    for num, _wt, v in wire_fields(buf):
        if num == 1 and isinstance(v, int):
            seconds = _signed(v)
        elif num == 2 and isinstance(v, int):
            nanos = _signed(v)
    if seconds == 0 and nanos == 0:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quantity(buf: bytes) -> str:
    return next((v.decode() for n, _wt, v in wire_fields(buf) if n == 1 and isinstance(v, bytes)), "")


def _scalar(f: F, where: str, wt: int, v: int | bytes) -> Any:
    expected = 0 if f.kind in (INT, BOOL) else 2
    if wt != expected:
        raise _bad(f"{where}: wire type {wt}, expected {expected}")
    if f.kind == INT:
        assert isinstance(v, int)
        return _signed(v)
    if f.kind == BOOL:
        return bool(v)
    assert isinstance(v, bytes)
    if f.kind == "bytes":
        return v
    if f.kind == "quantity":
        return _quantity(v)
    if f.kind == "time":
        return _time(v)
    try:
        return v.decode()
    except UnicodeDecodeError:
        raise _bad(f"{where}: invalid UTF-8") from None


def decode_message(name: str, buf: bytes, path: str = "") -> dict[str, Any]:
    """One message as the JSON object a Go server would produce for it."""
    schema = MESSAGES[name]
    out: dict[str, Any] = {}
    for num, wt, v in wire_fields(buf):
        f = schema.get(num)
        where = f"{path}{f.name if f else f'<field {num}>'} ({name} field {num})"
        if f is None or f.kind == "skip":
            if not _is_zero(v) or (f is not None and f.rep):
                raise unsupported(f"protobuf {where} is not decoded by the emulator")
            if f is not None and f.ptr:
                out[f.name] = {}  # a pointer to an empty struct was set
            continue
        value: Any
        if f.kind == "map":
            if wt != 2 or not isinstance(v, bytes):
                raise _bad(f"{where}: map entry must be length-delimited")
            key, item = "", None
            for en, ewt, ev in wire_fields(v):
                if en == 1 and isinstance(ev, bytes):
                    key = ev.decode()
                elif en == 2:
                    item = _scalar(F(key, f.msg), where, ewt, ev)
            if item is None:
                item = _scalar(F(key, f.msg), where, 2, b"")
            if f.msg == "bytes":
                item = base64.b64encode(item).decode()
            out.setdefault(f.name, {})[key] = item
            continue
        if f.kind == "msg":
            if wt != 2 or not isinstance(v, bytes):
                raise _bad(f"{where}: message must be length-delimited")
            value = decode_message(f.msg, v, f"{path}{f.name}.")
            keep = bool(value) or f.ptr
        else:
            value = _scalar(f, where, wt, v)
            if f.kind == "bytes":
                value = base64.b64encode(value).decode()
            keep = value not in (None, "", 0, False) or (f.ptr and value is not None)
        if f.rep:
            out.setdefault(f.name, []).append(value)
        elif keep:
            out[f.name] = value
        else:
            out.pop(f.name, None)
    return out


def decode_object(body: bytes) -> dict[str, Any]:
    """A ``k8s\\0`` + ``runtime.Unknown`` request body as a JSON-shaped object."""
    if not body.startswith(MAGIC):
        raise _bad("protobuf body does not start with the k8s\\x00 prefix")
    envelope = decode_message("Unknown", body[len(MAGIC) :])
    meta = envelope.get("typeMeta") or {}
    kind, api_version = meta.get("kind", ""), meta.get("apiVersion", "")
    if envelope.get("contentEncoding"):
        raise unsupported(f"protobuf contentEncoding {envelope['contentEncoding']!r}")
    if kind not in KINDS:
        raise unsupported(f"protobuf bodies are decoded for {', '.join(KINDS)} only, not {kind!r}")
    raw = base64.b64decode(envelope.get("raw", ""))
    return {"apiVersion": api_version, "kind": kind, **decode_message(kind, raw)}
