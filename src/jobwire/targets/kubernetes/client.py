"""The connection to the API server, and the only place that calls it.

Every API call the target makes goes through `Kube`, and each method names the (API group,
resource, verb) it needs in `API_CALLS`. `deploy/kubernetes/role.yaml` grants exactly that set;
`tests/kube/test_rbac.py` checks the Role against `API_CALLS` and the requests the emulator
actually served against both, so the Role cannot drift from the code.

Configuration, first found wins: the `kubeconfig` setting, the `KUBECONFIG` environment
variable (its first file), the in-cluster service account, `~/.kube/config`; `kube_context`
picks a context (default: the file's current context).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx2
from lightkube import AsyncClient, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ConfigError
from lightkube.core.generic_client import BasicRequest, GenericAsyncClient
from lightkube.core.resource import api_info
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import ConfigMap, Event, Pod
from lightkube.types import CascadeType

from jobwire.config import Settings
from jobwire.targets.kubernetes.slots import START, URGENT, Slots
from jobwire.targets.kubernetes.watch import decode_event
from jobwire.targets.kubernetes.wire import Wire, json_body, log_lines, segment

__all__ = ["API_CALLS", "Kube", "KubeUnavailable", "exists", "resolve_config"]

API_CALLS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("batch", "jobs", "delete"),
        ("batch", "cronjobs", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods/log", "get"),
        ("", "configmaps", "list"),
        ("", "configmaps", "delete"),
        ("", "events", "create"),
    }
)
"""(API group, resource, verb) of every call `Kube` makes: what the Role must grant, no more."""

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = 10.0
MAX_REQUESTS = 64
"""Requests in flight at once (lightkube's pool holds 100 connections)."""
ANSWER_CAP = 1 << 20
"""Bytes of a creation's answer read (the created Job, ~2 KB; an error's Status)."""
LOG_CAP = 16 << 20
"""Bytes of a finished pod's log read (its lines are capped again by the caller)."""
MAX_CREATES = 48
"""Of those, creations of Jobs: the other 16 stay free for what ends runs (their pods, logs,
deletes), which would otherwise queue behind a burst of creations (10,000 runs triggered at once:
a finished Job's log waited a minute behind the Jobs not yet created). And a freed slot goes to a
waiting request of theirs before a waiting creation (`slots.Slots`)."""


class KubeUnavailable(RuntimeError):
    """No usable cluster configuration."""


def resolve_config(settings: Settings) -> tuple[SingleConfig, str]:
    """The cluster configuration and where it came from (for the log)."""
    path: Path | None = settings.kubeconfig
    origin = "kubeconfig setting"
    if path is None and os.environ.get("KUBECONFIG"):
        first = next((p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p), None)
        path, origin = (Path(first) if first else None), "KUBECONFIG"
    try:
        if path is not None:
            if not path.is_file():
                raise KubeUnavailable(f"kubeconfig {path} ({origin}) does not exist")
            kc = KubeConfig.from_file(path)
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT / "token").is_file():
            kc, origin = KubeConfig.from_service_account(SERVICE_ACCOUNT), "in-cluster service account"
        elif (Path.home() / ".kube" / "config").is_file():
            kc, origin = KubeConfig.from_file(Path.home() / ".kube" / "config"), "~/.kube/config"
        else:
            raise KubeUnavailable(
                "no Kubernetes configuration: set JOBWIRE_KUBECONFIG or KUBECONFIG, "
                "or run jobwire in a cluster with a service account"
            )
        single = kc.get(settings.kube_context) if settings.kube_context else kc.get()
    except ConfigError as exc:
        raise KubeUnavailable(f"Kubernetes configuration ({origin}): {exc}") from exc
    if single is None:
        raise KubeUnavailable(f"Kubernetes configuration ({origin}) has no current context")
    return single, origin


def _in_namespace(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**manifest, "metadata": {**manifest.get("metadata", {}), "namespace": namespace}}


def _dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = obj.to_dict()
    return out


def _generic(client: AsyncClient) -> GenericAsyncClient:
    """lightkube's client underneath its typed one: the connection pool, authentication, base URL
    and the mapping of error answers to `ApiError`, used here for requests with plain-dict bodies
    and answers (no lightkube model round trips)."""
    generic: GenericAsyncClient = client._client
    return generic


async def _send(
    generic: GenericAsyncClient, request: httpx2.Request, stream: bool = False
) -> httpx2.Response:
    send: Callable[..., Awaitable[httpx2.Response]] = generic.send
    return await send(request, stream=stream)


def _raise_for_status(generic: GenericAsyncClient, response: httpx2.Response) -> None:
    """lightkube's: an error answer with a JSON Status raises `ApiError`."""
    check: Callable[[httpx2.Response], None] = generic.raise_for_status
    check(response)


WATCH_TIMEOUT = httpx2.Timeout(TIMEOUT, read=None)


def _collection(res: type, namespace: str) -> tuple[str, str]:
    """(apiVersion, URL path of the collection in `namespace`) of a namespaced resource class, as
    lightkube's requests spell them (`apis/batch/v1/namespaces/ns/jobs`, `api/v1/namespaces/ns/pods`)."""
    info = api_info(res)
    base = info.resource
    prefix = f"api/{base.version}" if base.group == "" else f"apis/{base.group}/{base.version}"
    return base.api_version, f"{prefix}/namespaces/{namespace}/{info.plural}"


class Kube:
    """Thin typed wrapper over lightkube's AsyncClient: plain dicts in and out.

    Two connection pools: `client` for requests — at most MAX_REQUESTS in flight, the rest wait
    here rather than time out waiting for a pooled connection (1,000 runs starting at once), what
    ends runs before creations — and
    `stream_client` for the long-lived streams (watches, followed logs), so a burst of requests can
    never starve the watches and a watch never holds a request's connection."""

    def __init__(self, config: SingleConfig) -> None:
        self.client = AsyncClient(
            config, timeout=httpx2.Timeout(TIMEOUT), field_manager="jobwire", trust_env=False
        )
        self.stream_client = AsyncClient(
            config, timeout=httpx2.Timeout(TIMEOUT), field_manager="jobwire", trust_env=False
        )
        self._requests = Slots(MAX_REQUESTS)
        self._creates = asyncio.Semaphore(MAX_CREATES)
        self.wire = Wire.of(_generic(self.client), TIMEOUT)
        """Job creations and pod logs over the plain HTTP/1.1 client (`wire.py`); None: all on httpx."""

    def _slots(self) -> contextlib.AbstractAsyncContextManager[None]:
        """A request slot for anything but a creation: served before waiting creations."""
        return self._requests.take(URGENT)

    async def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
        await self.client.close()
        await self.stream_client.close()

    # ---- jobs
    async def create_job(
        self, namespace: str, manifest: dict[str, Any] | Callable[[], dict[str, Any]]
    ) -> None:
        """POST the manifest as the plain dict it is. Not through lightkube's models: the manifest
        converted to a `Job` and the answer decoded into one and back to a dict (which nobody
        read) were ~16 % of jobwire's CPU in a burst of 10,000 runs. Errors are lightkube's
        `ApiError`, as before. A callable is called for the manifest once the slot is taken (what
        it raises, the caller gets), so runs waiting for a slot hold no manifest."""
        async with self._creates, self._requests.take(START):
            body = manifest() if callable(manifest) else manifest
            await self._post(Job, namespace, _in_namespace(body, namespace))

    async def _post(self, res: type, namespace: str, body: dict[str, Any]) -> None:
        """Create `body` (a `res`) in `namespace`; the answer is not decoded. Over the wire when
        there is one; through lightkube otherwise, or when the wire's answer was a 401."""
        api_version, collection = _collection(res, namespace)
        data = {"apiVersion": api_version, "kind": res.__name__, **body}
        if self.wire is not None:
            path = f"/{collection}?fieldManager=jobwire"
            if await self.wire.request("POST", path, json_body(data), ANSWER_CAP) is not None:
                return
        generic = _generic(self.client)
        request = generic.build_adapter_request(
            BasicRequest(method="POST", url=collection, params={"fieldManager": "jobwire"}, data=data)
        )
        _raise_for_status(generic, await _send(generic, request))

    async def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        async with self._slots():
            return _dict(await self.client.get(Job, name, namespace=namespace))

    async def list_jobs(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The Jobs matching an existence selector (a label key), and the list's resourceVersion."""
        async with self._slots():
            it = self.client.list(Job, namespace=namespace, labels={selector: exists()})
            items = [_dict(j) async for j in it]
            return items, it.resourceVersion

    def watch_jobs(
        self, namespace: str, selector: str, resource_version: str | None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._watch(Job, namespace, selector, resource_version)

    async def _watch(
        self, res: type, namespace: str, selector: str, resource_version: str | None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The changes of the objects carrying the label `selector`, from `resource_version`, each
        decoded straight into the slim dict the watch cache keeps (`watch.decode_event`: no
        lightkube model, no `to_dict`). Like lightkube's watch: a stream the server ends is opened
        again from the last resourceVersion seen; an error answer raises (`httpx2.HTTPStatusError`),
        an ERROR event raises `ApiError` with its Status (410 Expired: re-list)."""
        generic = _generic(self.stream_client)
        _, path = _collection(res, namespace)
        rv = resource_version
        while True:
            params = {"watch": "true", "labelSelector": selector}
            if rv is not None:
                params["resourceVersion"] = rv
            request = generic.build_adapter_request(
                BasicRequest(method="GET", url=path, params=params, timeout=WATCH_TIMEOUT)
            )
            response = await _send(generic, request, stream=True)
            try:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    ev_type, obj = decode_event(line)
                    rv = obj["metadata"].get("resourceVersion", rv)
                    yield ev_type, obj
            finally:
                await response.aclose()

    async def delete_job(self, namespace: str, name: str) -> None:
        """Background propagation: the Job goes at once, the garbage collector removes its pods."""
        async with self._slots():
            await self.client.delete(Job, name, namespace=namespace, cascade=CascadeType.BACKGROUND)

    async def get_cronjob(self, namespace: str, name: str) -> dict[str, Any]:
        async with self._slots():
            return _dict(await self.client.get(CronJob, name, namespace=namespace))

    # ---- pods
    async def list_pods(self, namespace: str, labels: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        async with self._slots():
            it = self.client.list(Pod, namespace=namespace, labels=labels)
            items = [_dict(p) async for p in it]
            return items, it.resourceVersion

    def watch_pods(
        self, namespace: str, selector: str, resource_version: str | None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._watch(Pod, namespace, selector, resource_version)

    async def pod_log(self, namespace: str, pod: str, follow: bool) -> AsyncGenerator[str, None]:
        if follow:
            async for line in self.stream_client.log(pod, namespace=namespace, follow=True):
                yield line
            return
        async with self._slots():
            if self.wire is not None:
                path = f"/api/v1/namespaces/{segment(namespace)}/pods/{segment(pod)}/log"
                answer = await self.wire.request("GET", path, None, LOG_CAP)
                if answer is not None:
                    for line in log_lines(answer.body, answer.complete):
                        yield line
                    return
            async for line in self.client.log(pod, namespace=namespace, follow=False):
                yield line

    # ---- other resources labelled with a run
    async def list_configmaps(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        async with self._slots():
            return [
                _dict(c)
                async for c in self.client.list(ConfigMap, namespace=namespace, labels={selector: exists()})
            ]

    async def delete_configmap(self, namespace: str, name: str) -> None:
        async with self._slots():
            await self.client.delete(ConfigMap, name, namespace=namespace)

    async def create_event(
        self, namespace: str, job: dict[str, Any], reason: str, message: str, type_: str = "Normal"
    ) -> None:
        """A Kubernetes Event on a Job, so `kubectl describe job` tells why jobwire acted on it."""
        md = job.get("metadata") or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{md.get('name', 'job')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": md.get("name"),
                "namespace": namespace,
                "uid": md.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "jobwire"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        async with self._slots():
            await self.client.create(cast(Event, Event.from_dict(body)))


def exists() -> Any:
    """lightkube's label selector value for "the key exists"."""
    from lightkube import operators

    return operators.exists()
