from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import httpx
import pytest

from jobwire.netguard import DestinationRefused, GuardedTransport, check_destination, refusal_reason
from tests.support.fake_context import RecordingServer


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
