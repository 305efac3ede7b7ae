"""Bearer-token authentication with `read` and `write` scopes.

- Tokens come from `settings.all_tokens()`; they are compared in constant time and never logged.
- No token configured + loopback bind: no authentication (local development).
- No token configured + any other bind: refused at startup (`BindRefusedError`).
- /healthz and /readyz are open; webhooks are authenticated by their HMAC signature (the engine
  verifies it) and run callbacks by the run's own callback token — neither uses these tokens.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from jobwire.api.schemas import ApiError
from jobwire.config import ApiToken, Settings, bind_addresses, is_loopback_address
from jobwire.engine import Engine

Scope = Literal["read", "write"]


class BindRefusedError(RuntimeError):
    """The API would be reachable from other machines without any token."""


def check_bind(settings: Settings) -> None:
    """Raise `BindRefusedError` when binding to a non-loopback address without a token. Decided on
    the addresses `settings.host` resolves to (every family), which are what the server binds."""
    if settings.all_tokens() or settings.is_loopback:
        return
    addresses = bind_addresses(settings.host)
    if not settings.host:
        shown = "all interfaces"
    elif not addresses:
        shown = f"{settings.host} (does not resolve)"
    elif addresses == [settings.host]:
        shown = settings.host
    else:
        shown = f"{settings.host} (resolves to {', '.join(addresses)})"
    raise BindRefusedError(
        f"JOBWIRE_API_TOKEN is required when binding to {shown} "
        "(set JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS, or bind to 127.0.0.1)"
    )


def check_listening(settings: Settings, addresses: list[str]) -> None:
    """After binding: raise `BindRefusedError` if a listening socket's address is not loopback and no
    token is configured (belt and braces for `check_bind`, whatever the resolver said then)."""
    if settings.all_tokens():
        return
    exposed = sorted({a for a in addresses if not is_loopback_address(a)})
    if exposed:
        raise BindRefusedError(
            f"jobwire is listening on {', '.join(exposed)} with no API token; it stopped: set "
            f"JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS, or bind to 127.0.0.1 (JOBWIRE_HOST={settings.host})"
        )


class Authenticator:
    def __init__(self, tokens: list[ApiToken], open_access: bool) -> None:
        self._tokens = [(t.token.get_secret_value().encode(), frozenset(t.scopes)) for t in tokens]
        self.open_access = open_access

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        check_bind(settings)
        tokens = settings.all_tokens()
        return cls(tokens, open_access=not tokens)

    def scopes_of(self, presented: str) -> frozenset[str] | None:
        """The scopes of the presented token, or None if it is unknown. Every configured token is
        compared (no early exit), each in constant time."""
        given = presented.encode()
        found: frozenset[str] | None = None
        for token, scopes in self._tokens:
            if hmac.compare_digest(token, given) and found is None:
                found = scopes
        return found

    def check_header(self, authorization: bytes | None, scope: Scope) -> None:
        """`check` from a raw `Authorization` header value (what HTTPBearer would parse)."""
        if self.open_access:
            return
        credentials = None
        scheme, token = get_authorization_scheme_param(
            authorization.decode("latin-1") if authorization else None
        )
        if scheme.lower() == "bearer" and token:
            credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token)
        self.check(credentials, scope)

    def check(self, credentials: HTTPAuthorizationCredentials | None, scope: Scope) -> None:
        if self.open_access:
            return
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "Unauthorized",
                "this endpoint needs `Authorization: Bearer <token>` (a JOBWIRE_API_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scopes = self.scopes_of(credentials.credentials)
        if scopes is None:
            raise ApiError(
                401, "Unauthorized", "the bearer token is not valid", headers={"WWW-Authenticate": "Bearer"}
            )
        if scope not in scopes:
            raise ApiError(
                403,
                "Forbidden",
                f"this token has scopes {sorted(scopes)}; this endpoint needs {scope!r}",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )


api_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="A JOBWIRE_API_TOKEN (or one of JOBWIRE_API_TOKENS) with the `read` or `write` scope.",
)
callback_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="RunCallbackToken",
    description="The per-run callback token handed to the job (JOBWIRE_CALLBACK_TOKEN), not an API token.",
)

Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(api_bearer)]


def _authenticator(request: Request) -> Authenticator:
    auth = request.app.state.auth
    assert isinstance(auth, Authenticator)
    return auth


async def require_read(request: Request, credentials: Credentials) -> None:
    _authenticator(request).check(credentials, "read")


async def require_write(request: Request, credentials: Credentials) -> None:
    _authenticator(request).check(credentials, "write")


READ = [Depends(require_read)]
WRITE = [Depends(require_write)]


async def get_engine(request: Request) -> Engine:
    engine = request.app.state.engine
    assert isinstance(engine, Engine)
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
