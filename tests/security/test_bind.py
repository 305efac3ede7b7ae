"""Defect 6: "a token is required off loopback" is decided on the addresses actually bound, not on
the text of JOBWIRE_HOST (`127.wild.test` resolving to 0.0.0.0 used to start with no token, and an
unauthenticated `POST /jobs` can define a local command)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from jobwire.api.auth import BindRefusedError, check_bind, check_listening
from jobwire.config import Settings
from tests.support.server import free_port

FAKE_DNS = {
    "127.wild.test": ["0.0.0.0"],
    "127.0.0.1.nip.test": ["127.0.0.1", "10.1.2.3"],
    "localhost": ["127.0.0.1", "::1"],
    "lo6.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host in FAKE_DNS:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in FAKE_DNS[host]
            ]
        if isinstance(host, str) and host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def settings(host: str, **kw: Any) -> Settings:
    return Settings(host=host, data_dir=Path("/nonexistent"), **kw)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "::1", "lo6.test", "mapped.test"])
def test_loopback_hosts_need_no_token(fake_dns: None, host: str) -> None:
    assert settings(host).is_loopback
    check_bind(settings(host))


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.wild.test", "127.wild.test (resolves to 0.0.0.0)"),
        ("127.0.0.1.nip.test", "127.0.0.1.nip.test (resolves to 10.1.2.3, 127.0.0.1)"),
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        ("0", "0 (resolves to 0.0.0.0)"),
        ("", "all interfaces"),
        ("no-such-host.test", "no-such-host.test (does not resolve)"),
    ],
)
def test_other_binds_without_a_token_are_refused(fake_dns: None, host: str, shown: str) -> None:
    assert not settings(host).is_loopback
    with pytest.raises(BindRefusedError) as caught:
        check_bind(settings(host))
    assert str(caught.value) == (
        f"JOBWIRE_API_TOKEN is required when binding to {shown} "
        "(set JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS, or bind to 127.0.0.1)"
    )
    check_bind(settings(host, api_token="t"))  # with a token it may


def test_listening_sockets_are_checked_too() -> None:
    check_listening(settings("127.0.0.1"), ["127.0.0.1", "::1"])
    check_listening(settings("0.0.0.0", api_token="t"), ["0.0.0.0"])
    with pytest.raises(BindRefusedError, match=r"jobwire is listening on 0\.0\.0\.0 with no API token"):
        check_listening(settings("127.0.0.1"), ["127.0.0.1", "0.0.0.0"])


def serve(tmp_path: Path, host: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    env.update(JOBWIRE_HOST=host, JOBWIRE_PORT=str(free_port()), JOBWIRE_DATA_DIR=str(tmp_path / "data"))
    code = prelude + "\nimport sys\nsys.argv = ['jobwire', 'serve']\nfrom jobwire.cli import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_serve_on_all_interfaces_without_a_token_exits(tmp_path: Path) -> None:
    done = serve(tmp_path, "0")
    assert done.returncode != 0
    assert "JOBWIRE_API_TOKEN is required when binding to 0 (resolves to 0.0.0.0)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_serve_with_a_loopback_looking_name_for_all_interfaces_exits(tmp_path: Path) -> None:
    # The resolver says what an attacker's DNS would: 127.wild.test is 0.0.0.0.
    prelude = textwrap.dedent(
        """
        import socket
        real = socket.getaddrinfo
        def fake(host, *a, **kw):
            return real("0.0.0.0" if host == "127.wild.test" else host, *a, **kw)
        socket.getaddrinfo = fake
        """
    )
    done = serve(tmp_path, "127.wild.test", prelude)
    assert done.returncode != 0
    assert "JOBWIRE_API_TOKEN is required when binding to 127.wild.test (resolves to 0.0.0.0)" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_stops_when_the_bound_sockets_are_not_loopback(tmp_path: Path) -> None:
    # Belt and braces: the check before binding is fooled (Python's resolver says 0.0.0.0 is
    # 127.0.0.1), but the server binds for real; the listening sockets are checked after binding.
    prelude = textwrap.dedent(
        """
        import socket
        real = socket.getaddrinfo
        def fake(host, *a, **kw):
            return real("127.0.0.1" if host == "0.0.0.0" else host, *a, **kw)
        socket.getaddrinfo = fake
        """
    )
    done = serve(tmp_path, "0.0.0.0", prelude)
    assert done.returncode == 1, done.stderr
    assert "error: jobwire is listening on 0.0.0.0 with no API token" in done.stderr
    assert "Traceback" not in done.stderr
