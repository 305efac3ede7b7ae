"""``KubeEmulator``: start/stop the emulated API server (in the current loop or in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .apiserver import ApiServer
from .control import Control
from .controller import JobController
from .faults import Faults
from .http import HttpServer
from .kubelet import Kubelet
from .registry import Registry
from .store import Store


class KubeEmulator:
    """An in-process fake kube-apiserver + Job controller + kubelet, served over plain HTTP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        bookmark_interval: float = 60.0,
        history_size: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.history_size = history_size
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self.http: HttpServer | None = None
        self.control = Control(self)
        self.faults = Faults()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ async API
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.store = Store(history_size=self.history_size)
        self.registry = Registry(self.store)
        self.kubelet = Kubelet(self)
        self.controller = JobController(self)
        self.api = ApiServer(self)
        self.http = HttpServer(self.api.handle, self.host, self.port)
        self.port = await self.http.start()
        self.controller.start()

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.stop()
        await self.controller.stop()
        await self.kubelet.stop()

    async def __aenter__(self) -> KubeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ thread helper
    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[KubeEmulator]:
        """Run the emulator on its own event loop in a daemon thread for the duration of the block."""
        started = threading.Event()
        stop_box: dict[str, Any] = {}
        error: list[BaseException] = []

        async def main() -> None:
            try:
                await self.start()
            except BaseException as e:
                error.append(e)
                started.set()
                return
            stop_event = asyncio.Event()
            stop_box["event"] = stop_event
            started.set()
            await stop_event.wait()
            await self.stop()

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), name="kubeemu", daemon=True)
        self._thread.start()
        started.wait(30)
        if error:
            raise error[0]
        try:
            yield self
        finally:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(stop_box["event"].set)
            self._thread.join(30)

    # ------------------------------------------------------------------ kubeconfig
    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": user}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return p
