"""The HTTP API (FastAPI): `create_app(engine)`."""

from jobwire.api.app import PREFIX, create_app
from jobwire.api.auth import BindRefusedError, check_bind

__all__ = ["PREFIX", "BindRefusedError", "check_bind", "create_app"]
