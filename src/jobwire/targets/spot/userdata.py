"""The instance's user data: a shell script that runs the job's image once with Docker."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

MAX_USER_DATA = 16 * 1024
"""EC2's limit on user data (before base64)... kept with a margin for the encoding."""


def script(image: str, command: list[str] | None, env: Mapping[str, str]) -> str:
    """Exports `env`, runs `docker run --rm -e NAME... IMAGE COMMAND...` (values travel through
    the environment, never through the command line), and when the container exits with a
    non-zero code without having called back, calls back `ok: false` itself — so a crashed
    container ends its run now instead of at its timeout (a second callback is refused, 409)."""
    lines = ["#!/bin/bash", "# written by jobwire: one container, then a callback if it failed", "set -u"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    flags = " ".join(f"-e {name}" for name in env)
    args = " ".join(shlex.quote(a) for a in command or [])
    lines += [
        f"docker run --rm {flags} {shlex.quote(image)} {args}".rstrip(),
        "code=$?",
        'if [ "$code" -ne 0 ]; then',
        '  curl -sS --retry 5 -X POST -H "Authorization: Bearer $JOBWIRE_CALLBACK_TOKEN" '
        '-H "Content-Type: application/json" '
        '-d "{\\"ok\\": false, \\"message\\": \\"the container exited with code $code\\"}" '
        '"$JOBWIRE_CALLBACK_URL"',
        "fi",
    ]
    return "\n".join(lines) + "\n"
