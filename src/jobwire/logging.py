"""structlog setup: human console lines or one JSON object per line, with secrets masked.

Standard-library loggers (uvicorn, asyncio, libraries) go through the same processors, so the
whole process has one format and one masking rule: the value of any key whose name contains
token, secret, password or authorization becomes `****`, however deep in the event it sits, and
the password of any `scheme://user:password@host` URL and credential-like query values
(`?token=`) in any text (messages, errors, tracebacks) become `****` too (`jobwire.redact`).

Tracebacks never show local variables, in any format: they are rendered as plain text (file,
line, code, exception) before masking. A local variable is exactly where a token or a webhook secret
sits while a request is handled, and structlog's console renderer with rich installed would print
every frame's locals.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from jobwire.redact import mask_url

MASK = "****"
SECRET_KEY_PARTS = ("token", "secret", "password", "authorization")
_MAX_DEPTH = 8
mask_url_passwords = mask_url


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and any(part in key.lower() for part in SECRET_KEY_PARTS)


def _mask(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: (MASK if is_secret_key(k) and v is not None else _mask(v, depth + 1)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_mask(v, depth + 1) for v in value)
    if isinstance(value, str):
        return mask_url_passwords(value)
    return value


def mask_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask values of secret-named keys (nested mappings and lists too)."""
    for key, value in list(event_dict.items()):
        if is_secret_key(key) and value is not None:
            event_dict[key] = MASK
        elif isinstance(value, Mapping | list | tuple | str):
            event_dict[key] = _mask(value)
        elif isinstance(value, BaseException):
            event_dict[key] = mask_url_passwords(str(value))
    return event_dict


def _level(name: str | int) -> int:
    if isinstance(name, int):
        return name
    value = logging.getLevelName(name.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {name!r} (expected debug, info, warning, error or critical)")
    return value


def configure_logging(level: str | int = "info", fmt: str = "console", *, stream: Any = None) -> None:
    """Configure structlog and the standard library once for the process.

    `fmt`: `console` (colours when the stream is a terminal) or `json`."""
    lvl = _level(level)
    out = stream or sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # plain-text tracebacks, never locals, in every format; then masked like any other text
        structlog.processors.format_exc_info,
        mask_secrets,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=hasattr(out, "isatty") and out.isatty(),
            exception_formatter=structlog.dev.plain_traceback,
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), drop_color_message, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)
    # uvicorn brings its own handlers; route its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
        lg.setLevel(lvl)
    if lvl > logging.DEBUG:
        for noisy in ("httpx", "httpcore", "asyncio", "aiosqlite"):
            logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))


def drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """uvicorn adds `color_message` to its records; it duplicates `event`."""
    event_dict.pop("color_message", None)
    return event_dict
