"""Job creations and pod logs over the plain HTTP/1.1 client (targets/kubernetes/wire.py), against a
real server on a socket — plain and TLS: the same request as lightkube's httpx path sends, lightkube's
errors, a 401 sent again through lightkube (which re-reads a rotated token), and the httpx path kept
for credentials the wire cannot replay."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lightkube import ApiError, KubeConfig

from jobwire.targets.kubernetes.client import Kube
from jobwire.targets.kubernetes.errors import is_already_exists
from jobwire.targets.kubernetes.wire import log_lines

MANIFEST = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "etl-1", "labels": {"jobwire.io/run": "r1"}},
    "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}},
}

Seen = dict[str, Any]
Handler = Callable[[Seen], tuple[int, bytes]]


class Recorder:
    """An HTTP/1.1 server (keep-alive) that notes each request and answers with `handler`."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.seen: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, target, _ = line.split(" ")
                seen = {"method": method, "target": target, "headers": headers, "body": body}
                self.seen.append(seen)
                status, answer = self.handler(seen)
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def config(server: str, user: dict[str, Any], ca: bytes | None = None) -> Any:
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    return KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    ).get()


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "c.pem").write_bytes(pem)
    (tmp / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx, pem


def created(seen: Seen) -> tuple[int, bytes]:
    return 201, json.dumps({"kind": "Job", "metadata": {"name": "etl-1"}}).encode()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_creation_over_the_wire_is_the_request_lightkube_sends(tmp_path: Path, tls: bool) -> None:
    server_ctx, ca = self_signed(tmp_path) if tls else (None, None)
    async with Recorder(created, server_ctx) as srv:
        scheme = "https" if tls else "http"
        kube = Kube(config(f"{scheme}://127.0.0.1:{srv.port}", {"token": "s3cret"}, ca))
        try:
            assert kube.wire is not None
            await kube.create_job("batch-ns", dict(MANIFEST))
            kube.wire = None  # the same creation through lightkube's httpx client
            await kube.create_job("batch-ns", dict(MANIFEST))
        finally:
            await kube.close()
    wire, httpx = srv.seen
    assert wire["headers"]["user-agent"] == "jobwire" != httpx["headers"]["user-agent"]
    assert wire["method"] == httpx["method"] == "POST"
    assert wire["target"] == httpx["target"] == "/apis/batch/v1/namespaces/batch-ns/jobs?fieldManager=jobwire"
    assert json.loads(wire["body"]) == json.loads(httpx["body"])
    assert json.loads(wire["body"])["metadata"]["namespace"] == "batch-ns"
    for name in ("authorization", "content-type", "host"):
        assert wire["headers"][name] == httpx["headers"][name], name
    assert wire["headers"]["authorization"] == "Bearer s3cret"


async def test_an_api_error_over_the_wire_is_lightkubes_api_error() -> None:
    status = {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}

    def conflict(seen: Seen) -> tuple[int, bytes]:
        return 409, json.dumps(status).encode()

    async with Recorder(conflict) as srv:
        kube = Kube(config(f"http://127.0.0.1:{srv.port}", {"token": "t"}))
        try:
            with pytest.raises(ApiError) as err:
                await kube.create_job("default", dict(MANIFEST))
        finally:
            await kube.close()
    assert is_already_exists(err.value) and err.value.status.code == 409
    assert len(srv.seen) == 1


async def test_a_401_goes_again_through_lightkube_which_reads_the_rotated_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old\n")

    def rotating(seen: Seen) -> tuple[int, bytes]:
        ok = seen["headers"].get("authorization") == f"Bearer {token.read_text().strip()}"
        return (201, b"{}") if ok else (401, b'{"kind":"Status","code":401,"reason":"Unauthorized"}')

    async with Recorder(rotating) as srv:
        kube = Kube(config(f"http://127.0.0.1:{srv.port}", {"tokenFile": str(token)}))
        try:
            await kube.create_job("default", dict(MANIFEST))
            token.write_text("new\n")  # the kubelet rotated it
            await kube.create_job("default", dict(MANIFEST))
            await kube.create_job("default", dict(MANIFEST))
        finally:
            await kube.close()
    got = [(s["headers"]["user-agent"] == "jobwire", s["headers"]["authorization"]) for s in srv.seen]
    assert got == [
        (True, "Bearer old"),  # 201
        (True, "Bearer old"),  # 401: sent again through lightkube
        (False, "Bearer old"),  # 401: lightkube reads the file again
        (False, "Bearer new"),  # 201
        (True, "Bearer new"),  # the wire takes the new header
    ]


async def test_a_pod_log_over_the_wire_is_lines_as_lightkube_yields_them() -> None:
    def log(seen: Seen) -> tuple[int, bytes]:
        assert seen["method"] == "GET"
        return 200, b"first\nsecond\r\nthird"

    async with Recorder(log) as srv:
        kube = Kube(config(f"http://127.0.0.1:{srv.port}", {"token": "t"}))
        try:
            lines = [line async for line in kube.pod_log("ns-1", "etl-1-abcde", follow=False)]
        finally:
            await kube.close()
    assert lines == ["first\n", "second\n", "third\n"]
    assert srv.seen[0]["target"] == "/api/v1/namespaces/ns-1/pods/etl-1-abcde/log"


def test_a_log_cut_at_the_cap_leaves_out_its_partial_last_line() -> None:
    assert log_lines(b"a\nb\npart", complete=False) == ["a\n", "b\n"]
    assert log_lines(b"a\nb\n", complete=True) == ["a\n", "b\n"]
    assert log_lines(b"", complete=True) == []


async def test_credentials_the_wire_cannot_replay_keep_the_httpx_path() -> None:
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "get-token"}}
    kube = Kube(config("http://127.0.0.1:1", exec_user))
    try:
        assert kube.wire is None
    finally:
        await kube.close()
