"""SSRF guard: HTTP targets may not reach loopback, private, link-local and other non-public addresses.

Job definitions can come from the API, so a job author must not be able to make jobwire call
`http://169.254.169.254/` (cloud metadata), `http://127.0.0.1:8080/api/...` (jobwire itself) or a
database on the private network. The operator opts in per target (`allow_private: true`) or for
the whole process (`JOBWIRE_HTTP_ALLOW_PRIVATE=true`).

Two layers use this module:

* `check_destination` resolves the host once before a run is marked running, so a refused
  destination fails early with a message naming the address and the setting to change.
* `GuardedBackend` is an httpcore network backend that resolves, checks and then connects to the
  *checked address itself*, so a DNS answer that changes between the check and the connect
  (DNS rebinding) cannot smuggle a private address in. TLS still verifies the certificate against
  the URL's host name (httpcore passes it as SNI/server_hostname, independent of the IP dialled).

A name resolving to several addresses is refused if *any* of them is refused: the resolver's
order is not under our control.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_HINT = "set `allow_private: true` on the target or JOBWIRE_HTTP_ALLOW_PRIVATE=true to allow it"

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class DestinationRefused(Exception):
    """The destination resolves to an address HTTP targets may not call."""

    def __init__(self, message: str, address: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.address = address


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def refusal_reason(addr: IPAddress) -> str | None:
    """Why `addr` may not be called (a short adjective), or None when it is a public address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return "link-local (scoped)"
        v4 = _embedded_v4(addr)
        if v4 is not None:
            inner = refusal_reason(v4)
            return f"{inner} (IPv4 {v4} inside IPv6)" if inner else None
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "not globally routable"
    return None


def _refuse(host: str, addr: str, why: str) -> DestinationRefused:
    named = addr if host.strip("[]") == addr else f"{addr} (resolved from {host})"
    return DestinationRefused(
        f"destination {named} is {why}; refused to prevent server-side request forgery — {ALLOW_HINT}",
        address=addr,
    )


async def resolve_destination(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve `host` and return its addresses, all checked (unless `allow_private`).

    Raises DestinationRefused for a refused address, OSError (socket.gaierror) when the name
    does not resolve: that is a connection problem, and another attempt may help.
    """
    bare = host.strip("[]")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = str(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise socket.gaierror(f"{bare}: no addresses")
    if not allow_private:
        for ip in addresses:
            why = refusal_reason(ipaddress.ip_address(ip))
            if why is not None:
                raise _refuse(host, ip, why)
    return addresses


async def check_destination(host: str, port: int, allow_private: bool) -> None:
    """Raise DestinationRefused unless every address of `host` may be called (see module doc)."""
    if allow_private:
        return
    await resolve_destination(host, port, allow_private=False)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to checked addresses: resolution, check and connect are one step."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await resolve_destination(host, port, allow_private=False)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    ip, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("unix sockets are not allowed for HTTP targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (no proxies or certificates from the environment other than the CA
    bundle), with a connection pool whose every connection goes through GuardedBackend."""

    def __init__(self, limits: httpx.Limits = httpx.Limits()) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(),
        )
