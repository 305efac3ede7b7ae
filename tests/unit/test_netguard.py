from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from jobwire import netguard
from jobwire.netguard import (
    DestinationRefused,
    GuardedTransport,
    KeepAlivePool,
    PooledTransport,
    check_destination,
    refusal_reason,
    resolve_destination,
)
from tests.support.fake_context import RecordingServer, wait_until


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    ],
)
def test_refused_addresses(addr: str) -> None:
    assert refusal_reason(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize(
    "addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses(addr: str) -> None:
    assert refusal_reason(ipaddress.ip_address(addr)) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "::1", "169.254.169.254", "0.0.0.0"])
async def test_check_destination_refuses(host: str) -> None:
    with pytest.raises(DestinationRefused) as info:
        await check_destination(host, 80, allow_private=False)
    assert "allow_private" in info.value.message
    assert "JOBWIRE_HTTP_ALLOW_PRIVATE" in info.value.message
    assert info.value.address is not None and info.value.address in info.value.message


async def test_check_destination_allowed() -> None:
    await check_destination("127.0.0.1", 80, allow_private=True)
    await check_destination("8.8.8.8", 53, allow_private=False)  # an IP literal: no DNS needed


async def test_unresolvable_name_is_an_os_error() -> None:
    with pytest.raises(OSError):
        await check_destination("no-such-host.invalid", 80, allow_private=False)


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    s = await RecordingServer().start()
    yield s
    await s.stop()


async def test_guarded_transport_checks_at_connect_time(server: RecordingServer) -> None:
    """The connect-time check (DNS rebinding): no pre-check, the transport itself refuses."""
    async with httpx.AsyncClient(transport=GuardedTransport()) as client:
        with pytest.raises(DestinationRefused):
            await client.get(server.url("/ok"))
        with pytest.raises(DestinationRefused):
            await client.get(f"http://localhost:{server.port}/ok")
    assert server.requests == []


async def test_unguarded_transport_reaches_loopback(server: RecordingServer) -> None:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport()) as client:
        assert (await client.get(server.url("/ok"))).status_code == 200


# ---------------------------------------------------------------- resolution: literals and memory


@pytest.fixture(autouse=True)
def _fresh_check_memory() -> Iterator[None]:
    netguard.forget_checked()
    yield
    netguard.forget_checked()


class FakeResolver:
    """Stands in for `netguard.getaddrinfo`: answers from `answers` (the last one repeats)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_ip_literals_need_no_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = FakeResolver(["8.8.8.8"])
    monkeypatch.setattr(netguard, "getaddrinfo", resolver)
    await check_destination("8.8.8.8", 80, allow_private=False)
    assert await resolve_destination("[2606:4700:4700::1111]", 443, allow_private=False) == [
        "2606:4700:4700::1111"
    ]
    for host in ("127.0.0.1", "[::1]", "169.254.169.254"):
        with pytest.raises(DestinationRefused):
            await check_destination(host, 80, allow_private=False)
    assert resolver.calls == []


async def test_non_standard_ip_notations_go_through_the_resolver() -> None:
    """`127.1` is not an IP literal for `ipaddress`, but the resolver turns it into 127.0.0.1."""
    with pytest.raises(DestinationRefused) as info:
        await check_destination("127.1", 80, allow_private=False)
    assert info.value.address == "127.0.0.1"


async def test_a_public_name_is_remembered_for_the_ttl_only(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = FakeResolver(["93.184.215.14"])
    monkeypatch.setattr(netguard, "getaddrinfo", resolver)
    await check_destination("example.test", 80, allow_private=False)
    await check_destination("EXAMPLE.test", 443, allow_private=False)
    assert resolver.calls == ["example.test"]
    monkeypatch.setattr(netguard, "CHECKED_TTL", 0.0)
    netguard.forget_checked()
    await check_destination("example.test", 80, allow_private=False)
    await check_destination("example.test", 80, allow_private=False)
    assert len(resolver.calls) == 3


async def test_a_name_checked_within_the_ttl_needs_no_await(monkeypatch: pytest.MonkeyPatch) -> None:
    """`destination_checked`: the http target's way to skip the await (and its timeout) per call."""
    resolver = FakeResolver(["93.184.215.14"], ["10.0.0.7"])
    monkeypatch.setattr(netguard, "getaddrinfo", resolver)
    netguard.forget_checked()
    assert netguard.destination_checked("anything.test", allow_private=True)
    assert not netguard.destination_checked("fresh.test", allow_private=False)
    await check_destination("fresh.test", 80, allow_private=False)
    assert netguard.destination_checked("FRESH.test", allow_private=False)
    assert not netguard.destination_checked("private.test", allow_private=False)
    with pytest.raises(DestinationRefused):
        await check_destination("private.test", 80, allow_private=False)
    assert not netguard.destination_checked("private.test", allow_private=False), "a refusal is not remembered"


async def test_a_refused_name_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = FakeResolver(["10.0.0.7"], ["93.184.215.14"])
    monkeypatch.setattr(netguard, "getaddrinfo", resolver)
    with pytest.raises(DestinationRefused):
        await check_destination("flip.test", 80, allow_private=False)
    await check_destination("flip.test", 80, allow_private=False)  # asks again, now public
    assert resolver.calls == ["flip.test", "flip.test"]


async def test_the_connect_time_check_does_not_use_the_remembered_answer(
    monkeypatch: pytest.MonkeyPatch, server: RecordingServer
) -> None:
    """DNS rebinding: the pre-check saw a public address (and remembers it), the name then
    resolves to loopback. The connection resolves afresh, checks, and refuses."""
    resolver = FakeResolver(["93.184.215.14"], ["127.0.0.1"])
    monkeypatch.setattr(netguard, "getaddrinfo", resolver)
    await check_destination("rebind.test", server.port, allow_private=False)
    await check_destination("rebind.test", server.port, allow_private=False)  # remembered
    async with httpx.AsyncClient(transport=GuardedTransport()) as client:
        with pytest.raises(DestinationRefused) as info:
            await client.get(f"http://rebind.test:{server.port}/ok")
    assert info.value.address == "127.0.0.1"
    assert resolver.calls == ["rebind.test", "rebind.test"]
    assert server.requests == []


# ---------------------------------------------------------------- KeepAlivePool


@dataclass
class PoolServer:
    """A keep-alive HTTP/1.1 server that counts connections. Paths: `/slow` answers after 0.2 s,
    `/close` answers and closes the connection, `/hang` never answers, anything else 200 at once."""

    connections: int = 0
    open: int = 0
    max_open: int = 0
    closed_by_client: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> PoolServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self._writers.add(writer)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    self.closed_by_client += 1
                    return
                path = line.split()[1].decode()
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                if path == "/hang":
                    if not await reader.read():
                        self.closed_by_client += 1
                    return
                if path == "/slow":
                    await asyncio.sleep(0.2)
                close = path == "/close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                    + (b"Connection: close\r\n" if close else b"")
                    + b"\r\nok"
                )
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            return
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def pool_server() -> AsyncIterator[PoolServer]:
    s = await PoolServer().start()
    yield s
    await s.stop()


def pool_client(**limits: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=PooledTransport(limits=httpx.Limits(**limits)))


def pool_of(client: httpx.AsyncClient) -> KeepAlivePool:
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, KeepAlivePool)
    return pool


async def test_pool_reuses_one_connection_for_sequential_requests(pool_server: PoolServer) -> None:
    async with pool_client() as client:
        for _ in range(5):
            assert (await client.get(pool_server.url("/ok"))).text == "ok"
        assert len(pool_of(client).connections) == 1
    assert pool_server.connections == 1


async def test_pool_bounds_connections_in_use(pool_server: PoolServer) -> None:
    async with pool_client(max_connections=2, max_keepalive_connections=10) as client:
        responses = await asyncio.gather(*(client.get(pool_server.url("/slow")) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert pool_server.max_open == 2


async def test_pool_times_out_waiting_for_a_slot(pool_server: PoolServer) -> None:
    async with pool_client(max_connections=1) as client:
        hang = asyncio.create_task(client.get(pool_server.url("/hang"), timeout=10))
        await wait_until(lambda: pool_server.open == 1)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(pool_server.url("/ok"), timeout=httpx.Timeout(10, pool=0.2))
        hang.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hang
        # the cancelled request gave its slot and its connection back: nothing in use, nothing kept
        assert pool_of(client).connections == []
        assert (await client.get(pool_server.url("/ok"), timeout=2)).status_code == 200
    await wait_until(lambda: pool_server.closed_by_client >= 1)


async def test_pool_keeps_at_most_max_keepalive_idle_connections(pool_server: PoolServer) -> None:
    async with pool_client(max_connections=10, max_keepalive_connections=1) as client:
        await asyncio.gather(*(client.get(pool_server.url("/slow")) for _ in range(3)))
        assert len(pool_of(client).connections) == 1
        await wait_until(lambda: pool_server.open == 1, what="the two surplus connections closed")


async def test_pool_evicts_the_least_recently_used_idle_connection(pool_server: PoolServer) -> None:
    """A full idle set must not stop a new origin's connections from being kept."""
    other = await PoolServer().start()
    try:
        async with pool_client(max_keepalive_connections=1) as client:
            await client.get(other.url("/ok"))
            for _ in range(5):
                await client.get(pool_server.url("/ok"))
            assert pool_server.connections == 1
            await wait_until(lambda: other.open == 0, what="the older origin's idle connection closed")
            assert len(pool_of(client).connections) == 1
    finally:
        await other.stop()


async def test_pool_does_not_reuse_a_connection_the_server_closed(pool_server: PoolServer) -> None:
    async with pool_client() as client:
        assert (await client.get(pool_server.url("/close"))).status_code == 200
        assert pool_of(client).connections == []  # "Connection: close": not kept
        assert (await client.get(pool_server.url("/ok"))).status_code == 200
        # the server drops an idle keep-alive connection: the next request notices, opens another
        for w in list(pool_server._writers):
            w.close()
        await wait_until(lambda: pool_server.open == 0)
        assert (await client.get(pool_server.url("/ok"))).status_code == 200
    assert pool_server.connections == 3


async def test_pool_sweeps_expired_idle_connections(
    pool_server: PoolServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = await PoolServer().start()
    try:
        async with pool_client(keepalive_expiry=0.1) as client:
            monkeypatch.setattr(KeepAlivePool, "SWEEP_INTERVAL", 0.0)
            await client.get(other.url("/ok"))
            idle = pool_of(client).connections
            await wait_until(lambda: all(c.has_expired() for c in idle), what="the idle connection to expire")
            await client.get(pool_server.url("/ok"))  # closing this response sweeps
            assert len(pool_of(client).connections) == 1
            await wait_until(lambda: other.open == 0, what="the expired connection to be closed")
    finally:
        await other.stop()


async def test_pool_close_closes_every_connection(pool_server: PoolServer) -> None:
    client = pool_client()
    await asyncio.gather(*(client.get(pool_server.url("/slow")) for _ in range(3)))
    assert pool_server.open == 3
    await client.aclose()
    await wait_until(lambda: pool_server.open == 0)
    assert pool_of(client).connections == []
