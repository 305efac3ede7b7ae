"""Fault-injection and inspection handle for tests (a Python object, not an HTTP endpoint).

Every method is safe to call from any thread: when the emulator runs in its own thread
(``KubeEmulator.run_in_thread``) calls are marshalled onto the emulator's event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .faults import FaultRule
from .store import Obj

if TYPE_CHECKING:
    from .server import KubeEmulator

T = TypeVar("T")


class Control:
    def __init__(self, emu: KubeEmulator) -> None:
        self._emu = emu

    def _call(self, fn: Callable[[], T]) -> T:
        loop = self._emu.loop
        if loop is None or self._emu.loop_thread == threading.get_ident():
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # pragma: no cover - re-raised in the caller's thread
                fut.set_exception(e)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    # ------------------------------------------------------------------ faults
    def compact(self, keep: int = 0) -> int:
        """Forget the event history so watches/lists from older resourceVersions get 410 Expired.

        Returns the compacted resourceVersion: any resourceVersion below it is "too old"."""
        return self._call(lambda: self._emu.store.compact(keep))

    def drop_watches(self) -> int:
        """Abort every open watch connection (TCP reset mid-stream). Returns how many were dropped."""
        return self._call(lambda: self._emu.http.drop_watches() if self._emu.http else 0)

    def end_watches(self) -> int:
        """End every open watch cleanly (terminating chunk), like a server-side timeout."""

        def run() -> int:
            ws = list(self._emu.store.watchers)
            for w in ws:
                w.queue.put_nowait(None)
            return len(ws)

        return self._call(run)

    def fail_next(
        self,
        verb: str,
        resource: str,
        count: int = 1,
        code: int = 500,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``count`` requests matching (verb, resource) fail with a Status of ``code``.

        verb: get, list, watch, create, update, patch, delete, deletecollection or "*".
        resource: a plural ("jobs"), "plural/subresource" ("jobs/status", "pods/log") or "*".
        reason defaults to the canonical reason for the code (Forbidden, InternalError, Invalid...)."""
        rule = FaultRule(verb, resource, count, code, reason, message)
        self._call(lambda: self._emu.faults.add(rule))

    def clear_faults(self) -> None:
        self._call(self._emu.faults.clear)

    def pause_controller(self) -> None:
        """Stop the Job controller from acting (pods keep running; events queue up)."""
        self._call(self._emu.controller.pause)

    def resume_controller(self) -> None:
        self._call(self._emu.controller.resume)

    # ------------------------------------------------------------------ inspection
    @property
    def resource_version(self) -> int:
        return self._call(lambda: self._emu.store.rv)

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        """Deep copies of the stored objects of a resource type (e.g. "pods")."""
        return self._call(lambda: [copy.deepcopy(o) for o in self._emu.store.iter(plural, namespace)])

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        return self._call(lambda: copy.deepcopy(self._emu.store.get(plural, namespace, name)))

    def requests(self) -> list[tuple[str, str]]:
        """(method, path?query) of every request served so far."""
        return self._call(lambda: list(self._emu.api.requests))

    def open_watches(self) -> int:
        return self._call(lambda: len(self._emu.store.watchers))

    def set_bookmark_interval(self, seconds: float) -> None:
        def run() -> None:
            self._emu.bookmark_interval = seconds

        self._call(run)

    async def wait_async(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Await (on the emulator's loop) until ``predicate()`` holds, re-checking on every store event."""
        store = self._emu.store
        changed = asyncio.Event()

        def listener(_ev: Any) -> None:
            changed.set()

        store.listeners.append(listener)
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    # woken by store events; the short fallback covers state outside the store
                    # (open connections, running processes)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 0.05)
                    changed.clear()
        finally:
            store.listeners.remove(listener)

    def wait_for(self, predicate: Callable[[Control], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate(control)`` holds (evaluated on the emulator loop after store events)."""
        loop = self._emu.loop
        assert loop is not None
        if self._emu.loop_thread == threading.get_ident():
            raise RuntimeError("use wait_async() from the emulator's own loop")
        fut = asyncio.run_coroutine_threadsafe(self.wait_async(lambda: predicate(self), timeout), loop)
        fut.result(timeout + 5)
