"""`jobwire serve` as a real subprocess on a free port, as a user runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        data_dir: Path,
        jobs: Path | None = None,
        port: int | None = None,
        command: list[str] | None = None,
        **env: str,
    ) -> None:
        """`command`: how to run `jobwire serve` (default this interpreter's `-m jobwire serve`;
        the packaging tests run a fresh venv's `jobwire` script)."""
        self.command = command or [sys.executable, "-m", "jobwire", "serve"]
        self.data_dir = data_dir
        self.jobs = jobs
        self.port = port or free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
        env.update(
            JOBWIRE_DATA_DIR=str(self.data_dir),
            JOBWIRE_PORT=str(self.port),
            JOBWIRE_HOST=self.env.pop("JOBWIRE_HOST", "127.0.0.1"),
            JOBWIRE_LOG_LEVEL="info",
        )
        if self.jobs is not None:
            env["JOBWIRE_JOBS"] = str(self.jobs)
        env.update(self.env)
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command, env=env, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jobwire serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.proc.kill()  # `with server:` never reaches __exit__ when start raises: leave nothing behind
        self.proc.wait(10)
        raise RuntimeError(f"jobwire serve did not become ready:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=30, **kw)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def all_runs(c: httpx.Client, job: str) -> list[dict[str, Any]]:
    """Every run of `job` over the API (`c` from `Server.client()`), following the pages."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"job": job, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/runs", params=params).json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items
