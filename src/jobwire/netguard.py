"""SSRF guard: HTTP targets may not reach loopback, private, link-local and other non-public addresses.

Job definitions can come from the API, so a job author must not be able to make jobwire call
`http://169.254.169.254/` (cloud metadata), `http://127.0.0.1:8080/api/...` (jobwire itself) or a
database on the private network. The operator opts in per target (`allow_private: true`) or for
the whole process (`JOBWIRE_HTTP_ALLOW_PRIVATE=true`).

Two layers use this module:

* `check_destination` resolves the host once before a run is marked running, so a refused
  destination fails early with a message naming the address and the setting to change. An IP
  literal is checked without a resolver call; a name found public is remembered for
  `CHECKED_TTL` seconds (this pre-check only: it is a convenience, not the guard).
* `GuardedBackend` is an httpcore network backend that resolves, checks and then connects to the
  *checked address itself*, so a DNS answer that changes between the check and the connect
  (DNS rebinding) cannot smuggle a private address in. It never uses the pre-check's memory: every
  new connection resolves and checks afresh. TLS still verifies the certificate against the URL's
  host name (httpcore passes it as SNI/server_hostname, independent of the IP dialled).

`KeepAlivePool` is the connection pool behind `PooledTransport`/`GuardedTransport`: httpcore's
`AsyncConnectionPool` without its passes over every connection on every request start and end
(encode/httpcore#1035: quadratic in the connections, and one `poll()` per idle connection each
time), which made 1,000 calls a second cost more than a core.

A name resolving to several addresses is refused if *any* of them is refused: the resolver's
order is not under our control.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, cast

import anyio
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


def ip_literal(host: str) -> str | None:
    """`host` without brackets when it is an IP literal, else None.

    Only the standard notations count: `127.1` or `0x7f.0.0.1` are names here, and the resolver
    (which accepts them) turns them into addresses that are then checked like any other."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return None
    return bare


async def getaddrinfo(host: str, port: int) -> list[str]:
    """The resolver (the event loop's `getaddrinfo`, in a worker thread): distinct addresses, in order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = str(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


async def resolve_destination(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve `host` and return its addresses, all checked (unless `allow_private`).

    An IP literal is its own answer (no resolver call). Always resolves afresh: no memory.
    Raises DestinationRefused for a refused address, OSError (socket.gaierror) when the name
    does not resolve: that is a connection problem, and another attempt may help.
    """
    literal = ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        bare = host.strip("[]")
        addresses = await getaddrinfo(bare, port)
        if not addresses:
            raise socket.gaierror(f"{bare}: no addresses")
    if not allow_private:
        for ip in addresses:
            why = refusal_reason(ipaddress.ip_address(ip))
            if why is not None:
                raise _refuse(host, ip, why)
    return addresses


CHECKED_TTL = 5.0
"""Seconds `check_destination` trusts an earlier "every address is public" answer for a name."""
_CHECKED_MAX = 4096
_checked: dict[str, float] = {}
"""Host name (lower case) → monotonic time until which it counts as checked."""


def destination_checked(host: str, allow_private: bool) -> bool:
    """True when `check_destination` would pass at once (no resolver call): the caller may skip
    the await and the timeout around it (2.6 µs of a run's ~220 µs of the loop)."""
    return allow_private or _checked.get(host.lower(), 0.0) > time.monotonic()


async def check_destination(host: str, port: int, allow_private: bool) -> None:
    """Raise DestinationRefused unless every address of `host` may be called (see module doc).

    A name that passed less than CHECKED_TTL seconds ago passes without a resolver call: this is
    the early, friendly check. The guard itself is GuardedBackend, which resolves and checks again
    for every connection it opens and dials only the checked address."""
    if destination_checked(host, allow_private):
        return
    await resolve_destination(host, port, allow_private=False)
    if ip_literal(host) is None:  # a literal costs nothing to check again
        if len(_checked) >= _CHECKED_MAX:
            _checked.clear()
        _checked[host.lower()] = time.monotonic() + CHECKED_TTL


def forget_checked() -> None:
    """Drop what `check_destination` remembers (tests; a changed resolver configuration)."""
    _checked.clear()


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


_OriginKey = tuple[bytes, bytes, int]
"""(scheme, host, port): httpcore.Origin is not hashable."""


class _PooledStream:
    """A response body that hands its connection back to the pool when closed."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: KeepAlivePool,
        conn: httpcore.AsyncConnectionInterface,
        origin: httpcore.Origin,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._conn = conn
        self._origin = origin
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # No wrapping generator: httpcore's stream closes its connection itself on an error.
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        finally:
            await self._pool._release(self._conn, self._origin)


class KeepAlivePool(httpcore.AsyncConnectionPool):
    """An httpcore connection pool (HTTP/1.1) whose request path does O(1) work.

    httpcore's own pool re-examines every connection, and for each idle one every other, on every
    request start and end; this one keeps idle connections in a stack per origin and looks only at
    the one it hands out (expired? closed by the server? — the same `has_expired` check). Idle
    connections of origins no longer called are closed by a sweep at most every `SWEEP_INTERVAL`
    seconds, done when a response is closed.

    * `max_connections` bounds the connections *in use* (requests wait for a slot, at most the
      request's `pool` timeout, then `httpcore.PoolTimeout`); `max_keepalive_connections` bounds the
      idle ones kept: beyond it the least recently used idle connection (any origin) is closed.
    * A connection is reused only after its response was read to the end and closed; a request that
      fails or is cancelled closes its connection.
    * One event loop at a time (jobwire's): no thread locks.
    """

    SWEEP_INTERVAL = 5.0

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        network_backend: httpcore.AsyncNetworkBackend,
        max_connections: int | None = 100,
        max_keepalive_connections: int | None = 20,
        keepalive_expiry: float | None = 5.0,
    ) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=network_backend,
        )
        self._max_idle = max_keepalive_connections
        self._slots = asyncio.Semaphore(max_connections) if max_connections is not None else None
        self._idle: dict[_OriginKey, dict[httpcore.AsyncConnectionInterface, None]] = {}
        """Idle connections per origin (ordered sets), most recently used last."""
        self._lru: dict[httpcore.AsyncConnectionInterface, _OriginKey] = {}
        """Every idle connection → its origin, least recently used first."""
        self._busy: set[httpcore.AsyncConnectionInterface] = set()
        self._sweep_at = 0.0
        self._closed = False

    @property
    def connections(self) -> list[httpcore.AsyncConnectionInterface]:
        return [*self._lru, *self._busy]

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if request.url.scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(
                f"unsupported URL scheme {request.url.scheme.decode(errors='replace')!r}"
            )
        if self._slots is not None:
            if self._slots.locked():
                timeout = request.extensions.get("timeout", {}).get("pool")
                try:
                    async with asyncio.timeout(timeout):
                        await self._slots.acquire()
                except TimeoutError:
                    raise httpcore.PoolTimeout("no connection slot free within the pool timeout") from None
            else:
                await self._slots.acquire()  # free: returns without suspending
        try:
            origin = request.url.origin
            while True:
                conn, stale = self._checkout(origin)
                if stale:
                    await self._close(stale)
                fresh = conn is None
                if conn is None:
                    conn = self.create_connection(origin)
                self._busy.add(conn)
                try:
                    response = await conn.handle_async_request(request)
                except httpcore.ConnectionNotAvailable:
                    # A kept connection that closed under us: try the next one / a new one.
                    self._busy.discard(conn)
                    await self._close([conn])
                    if fresh:
                        raise
                    continue
                except BaseException:
                    self._busy.discard(conn)
                    await self._close([conn])
                    raise
                break
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        stream = cast(AsyncIterable[bytes], response.stream)
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_PooledStream(stream, self, conn, origin),
            extensions=response.extensions,
        )

    def _checkout(
        self, origin: httpcore.Origin
    ) -> tuple[httpcore.AsyncConnectionInterface | None, list[httpcore.AsyncConnectionInterface]]:
        """The most recently used idle connection to `origin` still good to use, and the
        unusable ones met on the way (to close)."""
        stale: list[httpcore.AsyncConnectionInterface] = []
        key = (origin.scheme, origin.host, origin.port)
        stack = self._idle.get(key)
        while stack:
            conn, _ = stack.popitem()
            del self._lru[conn]
            if not stack:
                del self._idle[key]
            if conn.is_idle() and not conn.has_expired():
                return conn, stale
            stale.append(conn)
        return None, stale

    async def _release(self, conn: httpcore.AsyncConnectionInterface, origin: httpcore.Origin) -> None:
        """The response on `conn` was closed: keep the connection for the next request or close it."""
        self._busy.discard(conn)
        if self._slots is not None:
            self._slots.release()
        closing: list[httpcore.AsyncConnectionInterface] = []
        if conn.is_idle() and not self._closed and self._max_idle != 0:
            if self._max_idle is not None and len(self._lru) >= self._max_idle:
                oldest = next(iter(self._lru))
                self._drop_idle(oldest)
                closing.append(oldest)
            key = (origin.scheme, origin.host, origin.port)
            self._idle.setdefault(key, {})[conn] = None
            self._lru[conn] = key
        elif not conn.is_closed():
            closing.append(conn)
        now = time.monotonic()
        if now >= self._sweep_at:
            self._sweep_at = now + self.SWEEP_INTERVAL
            closing += self._sweep()
        if closing:
            await self._close(closing)

    def _drop_idle(self, conn: httpcore.AsyncConnectionInterface) -> None:
        key = self._lru.pop(conn)
        stack = self._idle[key]
        del stack[conn]
        if not stack:
            del self._idle[key]

    def _sweep(self) -> list[httpcore.AsyncConnectionInterface]:
        """Take expired or server-closed connections out of the idle stacks (to close)."""
        gone = [conn for conn in self._lru if not conn.is_idle() or conn.has_expired()]
        for conn in gone:
            self._drop_idle(conn)
        return gone

    @staticmethod
    async def _close(conns: list[httpcore.AsyncConnectionInterface]) -> None:
        with anyio.CancelScope(shield=True):
            for conn in conns:
                await conn.aclose()

    async def aclose(self) -> None:
        """Close every connection; a response still open closes its own when it is closed."""
        self._closed = True
        conns = self.connections
        self._idle.clear()
        self._lru.clear()
        self._busy.clear()
        await self._close(conns)


class PooledTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (no proxies, credentials or certificates from the environment other than
    the CA bundle) over a KeepAlivePool. `network_backend`: how connections are opened."""

    def __init__(
        self,
        limits: httpx.Limits = httpx.Limits(),
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        self._pool = KeepAlivePool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=network_backend or httpcore.AnyIOBackend(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )


class GuardedTransport(PooledTransport):
    """A PooledTransport whose every connection goes through GuardedBackend."""

    def __init__(self, limits: httpx.Limits = httpx.Limits()) -> None:
        super().__init__(limits=limits, network_backend=GuardedBackend())
