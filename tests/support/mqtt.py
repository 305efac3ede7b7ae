"""Mosquitto for tests: the shared broker on 1883 (each test its own `jwtest/<uuid>/…` topics and
client ids, sessions removed at the end), or a private broker on a free port that a test may
stop and restart without disturbing anyone else.

A test that needs the broker fails (not skips) when `CI=true` and it is down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SHARED = ("127.0.0.1", 1883)


def reachable(addr: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(addr, timeout=1):
            return True
    except OSError:
        return False


def need_mosquitto() -> None:
    if reachable(SHARED):
        return
    message = f"Mosquitto is not running on {SHARED[0]}:{SHARED[1]} (bash scripts/services.sh starts it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str = "jwtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def publisher(url_host: str = "127.0.0.1", port: int = 1883, **kw: Any) -> aiomqtt.Client:
    """A plain MQTT 5 client with its own id (clean session)."""
    return aiomqtt.Client(
        url_host, port, identifier=unique("jwtest-pub"), protocol=aiomqtt.ProtocolVersion.V5, **kw
    )


def user_props(**props: str) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = list(props.items())
    return p


async def forget_session(client_id: str, host: str = "127.0.0.1", port: int = 1883, v5: bool = True) -> None:
    """Remove `client_id`'s persistent session from the broker: connect with a clean start and
    no session expiry, then leave."""
    with contextlib.suppress(aiomqtt.MqttError):
        if v5:
            client = aiomqtt.Client(host, port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5)
        else:
            client = aiomqtt.Client(host, port, identifier=client_id, clean_session=True)
        async with client:
            pass


class PrivateMosquitto:
    """`mosquitto` on a free loopback port with persistence in its own folder; `restart` stops
    it (SIGTERM: it saves sessions and queued messages) and starts it again on the same port."""

    def __init__(self, folder: Path, extra_conf: str = "") -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            if os.environ.get("CI") == "true":
                pytest.fail("mosquitto is not installed")
            pytest.skip("mosquitto is not installed")
        self.exe = exe
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\nlog_dest file {folder}/mosquitto.log\n"
            # as root, mosquitto would switch to its own user, who cannot write in the test's folder
            + ("user root\n" if os.geteuid() == 0 else "")
            + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> PrivateMosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)])
        deadline = time.monotonic() + 15
        while not reachable(("127.0.0.1", self.port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private mosquitto did not start: {(self.folder / 'mosquitto.log').read_text()}")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 15)
        self.proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()
