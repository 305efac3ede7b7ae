"""Object storage with one monotonic resourceVersion, bounded event history and watch fan-out.

Everything here runs on the emulator's event loop thread; nothing is thread-safe by itself.
Stored objects are never mutated after they are stored: writers always store a fresh dict.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, expired

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = {}
        obj["metadata"] = m
    return m


def obj_key(obj: Obj) -> ObjKey:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    plural: str
    obj: Obj
    old: Obj | None = None

    @property
    def namespace(self) -> str:
        return obj_key(self.obj)[0]


@dataclass(eq=False)
class Watcher:
    plural: str
    namespace: str | None
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)

    def wants(self, ev: Event) -> bool:
        return ev.plural == self.plural and (self.namespace is None or ev.namespace == self.namespace)


class Store:
    """All objects of the emulated cluster."""

    def __init__(self, history_size: int = 10_000, first_rv: int = 1000) -> None:
        self.rv: int = first_rv
        self.objects: dict[str, dict[ObjKey, Obj]] = {}
        self.history: deque[Event] = deque()
        self.history_size = history_size
        # events with rv <= compacted_rv are no longer available
        self.compacted_rv: int = first_rv
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[Event], None]] = []

    # ------------------------------------------------------------------ reads
    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get(plural, {}).get((namespace, name))

    def iter(self, plural: str, namespace: str | None = None) -> Iterator[Obj]:
        items = self.objects.get(plural, {})
        for key in sorted(items):
            if namespace is None or key[0] == namespace:
                yield items[key]

    def snapshot(self, plural: str, at_rv: int) -> dict[ObjKey, Obj]:
        """State of one resource type as it was at ``at_rv`` (410 if history no longer covers it)."""
        if at_rv < self.compacted_rv:
            raise expired(f"too old resource version: {at_rv} ({self.compacted_rv + 1})")
        state = dict(self.objects.get(plural, {}))
        for ev in reversed(self.history):
            if ev.rv <= at_rv:
                break
            if ev.plural != plural:
                continue
            key = obj_key(ev.obj)
            if ev.type == "ADDED":
                state.pop(key, None)
            elif ev.type == "MODIFIED":
                assert ev.old is not None
                state[key] = ev.old
            else:
                state[key] = ev.old if ev.old is not None else ev.obj
        return state

    # ------------------------------------------------------------------ writes
    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _stamp(self, obj: Obj) -> int:
        rv = self.next_rv()
        meta(obj)["resourceVersion"] = str(rv)
        return rv

    def add(self, plural: str, obj: Obj) -> Obj:
        m = meta(obj)
        m.setdefault("uid", str(uuid.uuid4()))
        m.setdefault("creationTimestamp", now_iso())
        rv = self._stamp(obj)
        self.objects.setdefault(plural, {})[obj_key(obj)] = obj
        self._emit(Event(rv, "ADDED", plural, obj))
        return obj

    def replace(self, plural: str, obj: Obj) -> Obj:
        key = obj_key(obj)
        old = self.objects[plural][key]
        rv = self._stamp(obj)
        self.objects[plural][key] = obj
        self._emit(Event(rv, "MODIFIED", plural, obj, old))
        return obj

    def remove(self, plural: str, namespace: str, name: str) -> Obj:
        old = self.objects[plural].pop((namespace, name))
        final = copy.deepcopy(old)
        rv = self._stamp(final)
        self._emit(Event(rv, "DELETED", plural, final, old))
        return final

    def _emit(self, ev: Event) -> None:
        self.history.append(ev)
        while len(self.history) > self.history_size:
            dropped = self.history.popleft()
            self.compacted_rv = dropped.rv
        for w in list(self.watchers):
            if w.wants(ev):
                w.queue.put_nowait(ev)
        for listener in list(self.listeners):
            listener(ev)

    # ------------------------------------------------------------------ watch
    def subscribe(
        self, plural: str, namespace: str | None, after_rv: int | None
    ) -> tuple[Watcher, list[Event]]:
        """Register a watcher; return it plus the history events after ``after_rv`` to replay."""
        replay: list[Event] = []
        if after_rv is not None:
            if after_rv < self.compacted_rv:
                raise expired(f"too old resource version: {after_rv} ({self.compacted_rv + 1})")
            w = Watcher(plural, namespace)
            replay = [ev for ev in self.history if ev.rv > after_rv and w.wants(ev)]
        else:
            w = Watcher(plural, namespace)
        self.watchers.add(w)
        return w, replay

    def unsubscribe(self, w: Watcher) -> None:
        self.watchers.discard(w)

    def compact(self, keep: int = 0) -> int:
        """Forget history so that only the last ``keep`` events can be replayed; returns compacted rv."""
        while len(self.history) > keep:
            self.compacted_rv = self.history.popleft().rv
        if not self.history:
            self.compacted_rv = self.rv
        return self.compacted_rv


def check_rv_param(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        rv = int(value)
    except ValueError:
        raise ApiError(
            400, f'resourceVersion: Invalid value: "{value}": must be a non-negative integer'
        ) from None
    if rv < 0:
        raise ApiError(400, f'resourceVersion: Invalid value: "{value}": must be a non-negative integer')
    return rv
