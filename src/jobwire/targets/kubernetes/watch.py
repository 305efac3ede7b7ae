"""One watch per (namespace, resource), shared by every run in that namespace.

`NamespaceWatch` lists the objects carrying the `jobwire.io/run` label once, then watches from
the list's resourceVersion, keeping a cache of the latest object of each name and handing every
change to the subscribers of its key (a Job's name; for pods, the `job-name` label). Not a poll
per Job: 1,000 runs in a namespace share one connection.

Recovery:
* connection dropped (reset, EOF mid-chunk, proxy timeout): re-watch from the last
  resourceVersion seen, with a short back-off — nothing is replayed twice, nothing is lost;
* 410 Gone (`Expired`: the history was compacted past our resourceVersion), as a watch event or
  an HTTP status: re-list, compare with the cache and hand subscribers a synthetic MODIFIED for
  every changed object and DELETED for every vanished one, then watch from the new list;
* 401/403/404 on the watch or list: permanent until someone fixes RBAC — subscribers get an
  ERROR event (their runs fail with the API's Status), and the watch keeps retrying slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
import msgspec
import structlog
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from jobwire.targets.kubernetes.errors import api_code, run_error

log = structlog.get_logger(__name__)

Event = tuple[str, str, dict[str, Any]]
"""(what, type, object): what is the watch's resource ("jobs", "pods"); type ADDED, MODIFIED,
DELETED — or ERROR with {"error": RunError}."""

ListFn = Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]]
WatchFn = Callable[[str | None], AsyncIterator[tuple[str, dict[str, Any]]]]
KeyFn = Callable[[dict[str, Any]], str | None]

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
FATAL_CODES = frozenset({401, 403, 404})


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """What jobwire reads of a watched Job or pod — kind, metadata (without `managedFields`) and
    status — without its `spec` (the pod template, containers, env): the cache holds every Job and
    pod jobwire made until they are deleted, and with 10,000 runs the specs were most of its size."""
    if "spec" not in obj and "managedFields" not in (obj.get("metadata") or ()):
        return obj  # already slim (decoded by `decode_event`)
    md = obj.get("metadata")
    if isinstance(md, dict) and "managedFields" in md:
        md = {k: v for k, v in md.items() if k != "managedFields"}
    return {k: (md if k == "metadata" else v) for k, v in obj.items() if k != "spec"}


class _Event(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _Object(msgspec.Struct):
    """What `slim` keeps of a watched object; the rest (`spec`) is skipped while decoding."""

    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    kind: str | None = None
    api_version: str | None = msgspec.field(name="apiVersion", default=None)
    status: dict[str, Any] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_object = msgspec.json.Decoder(_Object).decode


def decode_event(line: str | bytes) -> tuple[str, dict[str, Any]]:
    """One line of a watch stream → (type, the object as `slim` would leave it), straight from
    the JSON: no lightkube model and no `to_dict` per event (~6 % of a 10,000-run burst), and the
    `spec` is never built. An ERROR event raises `ApiError` with its Status, as lightkube's watch
    does (410 Expired: the caller re-lists)."""
    event = _decode_event(line)
    if event.type == "ERROR":
        raise ApiError(status=msgspec.json.decode(event.object, type=Status))
    obj = _decode_object(event.object)
    md = obj.metadata
    md.pop("managedFields", None)
    out: dict[str, Any] = {"metadata": md}
    if obj.kind is not None:
        out["kind"] = obj.kind
    if obj.api_version is not None:
        out["apiVersion"] = obj.api_version
    if obj.status is not None:
        out["status"] = obj.status
    return event.type, out


class Inbox:
    """The events one run waits for, in order, for one reader: a list and at most one waiter. An
    `asyncio.Queue` per run (three deques, an `asyncio.Event` with its own deque: ~2 KB) was ~20 MB
    of 10,000 concurrent runs."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Event) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    async def get(self) -> Event:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Subscription:
    """The changes of one key, in order. `close()` when done (or use it as a context manager)."""

    def __init__(self, watch: NamespaceWatch, key: str, queue: Inbox | None = None) -> None:
        self._watch = watch
        self.key = key
        self.queue: Inbox = queue if queue is not None else Inbox()

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._watch._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NamespaceWatch:
    def __init__(
        self,
        what: str,
        namespace: str,
        list_fn: ListFn,
        watch_fn: WatchFn,
        key_fn: KeyFn,
        done: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.what = what
        self._done = done
        """Objects in a final state: dropped from the cache once nobody follows their key (a
        finished run's Job and pods; 10,000 finished runs' objects were ~100 MB). A later event
        of one (its deletion) or a relist brings it back."""
        self.namespace = namespace
        self._list = list_fn
        self._watch = watch_fn
        self._key = key_fn
        self.cache: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, dict[str, dict[str, Any]]] = {}
        """The cache indexed by key (Job name; for pods the job-name label): no scans per run."""
        self._subs: dict[str, set[Subscription]] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # counters, for tests and metrics
        self.lists = 0
        self.reconnects = 0
        self.last_error: str | None = None
        """Why the watch is down (None while it lists and watches): shown in `/readyz`."""
        self.expired = 0
        self.events = 0

    # ---- subscribers
    def subscribe(self, key: str, queue: Inbox | None = None) -> Subscription:
        """Start receiving changes for `key` (into `queue`, which several subscriptions may share);
        what the cache holds for it is delivered first."""
        sub = Subscription(self, key, queue)
        self._subs.setdefault(key, set()).add(sub)
        for obj in list(self._by_key.get(key, {}).values()):
            sub.queue.put_nowait((self.what, "ADDED", obj))
        self.start()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
                self._evict(sub.key)

    def _evict(self, key: str) -> None:
        bucket = self._by_key.get(key)
        if self._done is None or bucket is None:
            return
        for name, obj in list(bucket.items()):
            if self._done(obj):
                del bucket[name]
                self.cache.pop(name, None)
        if not bucket:
            del self._by_key[key]

    def objects(self, key: str) -> list[dict[str, Any]]:
        return list(self._by_key.get(key, {}).values())

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # ---- lifecycle
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._run(), name=f"jobwire-kube-watch-{self.what}-{self.namespace}"
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- the loop
    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                async for ev_type, obj in self._watch(self.resource_version):
                    backoff = BACKOFF_MIN
                    self.resource_version = (obj.get("metadata") or {}).get("resourceVersion")
                    self._apply(ev_type, obj)
                    self.last_error = None
                # the iterator only ends if the client gave up: start again from where we are
            except asyncio.CancelledError:
                raise
            except httpx2.HTTPError as exc:
                code = api_code(exc)
                if code != 410:
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if code == 410:
                    self.expired += 1
                    log.info("kubernetes watch expired, re-listing", what=self.what, namespace=self.namespace)
                    self.resource_version = None
                    continue
                self.reconnects += 1
                if code in FATAL_CODES:
                    log.error(
                        "kubernetes watch refused",
                        what=self.what,
                        namespace=self.namespace,
                        code=code,
                        error=str(exc)[:300],
                    )
                    self._broadcast_error(exc)
                    backoff = BACKOFF_MAX
                else:
                    log.info(
                        "kubernetes watch interrupted, resuming",
                        what=self.what,
                        namespace=self.namespace,
                        error=f"{type(exc).__name__}: {str(exc)[:200]}",
                        resource_version=self.resource_version,
                    )
            except Exception as exc:
                self.reconnects += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.exception("kubernetes watch failed", what=self.what, namespace=self.namespace)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _relist(self) -> None:
        items, rv = await self._list()
        self.lists += 1
        fresh = {o["metadata"]["name"]: o for o in items}
        for name, gone in list(self.cache.items()):
            if name not in fresh:
                self._apply("DELETED", gone)
        for name, obj in fresh.items():
            old = self.cache.get(name)
            if old is None:
                self._apply("ADDED", obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._apply("MODIFIED", obj)
        self.resource_version = rv
        self.synced.set()
        self.last_error = None

    def _apply(self, ev_type: str, obj: dict[str, Any]) -> None:
        self.events += 1
        obj = slim(obj)
        name = obj["metadata"]["name"]
        if ev_type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        old = self.cache.pop(name, None)
        if old is not None:
            old_key = self._key(old)
            if old_key is not None:
                bucket = self._by_key.get(old_key)
                if bucket is not None:
                    bucket.pop(name, None)
                    if not bucket:
                        del self._by_key[old_key]
        key = self._key(obj)
        if ev_type != "DELETED":
            self.cache[name] = obj
            if key is not None:
                self._by_key.setdefault(key, {})[name] = obj
        if key is None:
            return
        for sub in self._subs.get(key, ()):
            sub.queue.put_nowait((self.what, ev_type, obj))

    def _broadcast_error(self, exc: BaseException) -> None:
        err = run_error(exc, f"watch {self.what} in namespace {self.namespace}")
        for subs in self._subs.values():
            for sub in subs:
                sub.queue.put_nowait((self.what, "ERROR", {"error": err}))
