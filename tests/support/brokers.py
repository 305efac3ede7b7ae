"""Real brokers for tests: a private RabbitMQ vhost per test session worker, removed at the end.

A test that needs a broker fails (not skips) when `CI=true` and the broker is down."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid

import pytest

RABBIT = ("127.0.0.1", 5672)


def reachable(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=1):
            return True
    except OSError:
        return False


def need(addr: tuple[str, int], what: str) -> None:
    if reachable(addr):
        return
    message = f"{what} is not running on {addr[0]}:{addr[1]} (make services starts it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def rabbitmqctl(*args: str) -> str:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    proc = subprocess.run([exe, "-q", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {proc.stderr or proc.stdout}")
    return proc.stdout


class RabbitVhost:
    """A fresh vhost the `guest` user may use; `close_connections` drops every connection to it
    (as `rabbitmqctl close_all_connections` would for the whole broker), touching no other test."""

    def __init__(self) -> None:
        self.name = f"jwtest-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.url = f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def close_connections(self) -> None:
        rabbitmqctl("close_all_connections", "--vhost", self.name, "jobwire test: broker restart")

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)
