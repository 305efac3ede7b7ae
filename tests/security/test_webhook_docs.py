"""The webhook recipes of docs/api.md ("Webhooks") work as printed: the curl and Python senders,
copied out of the document, make a run on a real `jobwire serve`; the receiver's `verify` accepts
what jobwire signs and refuses a tampered body. README links to the section."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobwire.signing import sign
from tests.support.server import Server
from tests.support.waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
SECRET = "docs-recipe-secret-0123456789"
JOBS = """
jobs:
  - name: deploy
    triggers: [{webhook: {secret_env: HOOK_SECRET}}]
    target: {type: local, command: ["true"]}
"""


def webhook_section() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    start = text.index("\n## Webhooks\n")
    return text[start : text.index("\n## ", start + 1)]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", webhook_section(), flags=re.S)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(tmp_path / "data", jobs, HOOK_SECRET=SECRET).start()
    yield srv
    srv.stop()


def runs(srv: Server) -> list[dict[str, object]]:
    with srv.client() as c:
        return list(c.get("/runs", params={"job": "deploy"}).json()["items"])


@pytest.mark.parametrize("lang", ["sh", "python"])
def test_documented_sender_recipe_makes_a_run(server: Server, lang: str, tmp_path: Path) -> None:
    recipe = blocks(lang)[0]
    script = tmp_path / f"recipe.{lang}"
    script.write_text(recipe)
    env = {**os.environ, "URL": server.url, "HOOK_SECRET": SECRET}
    argv = ["bash", "-euo", "pipefail", str(script)] if lang == "sh" else [sys.executable, str(script)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{recipe}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert '"job":"deploy"' in done.stdout.replace(" ", ""), done.stdout
    eventually_sync(lambda: len(runs(server)) == 1, what="the recipe's run")


def test_documented_receiver_verify_accepts_jobwire_signatures() -> None:
    (code,) = [b for b in blocks("python") if "def verify(" in b]
    scope: dict[str, object] = {}
    exec(compile(code, "docs/api.md", "exec"), scope)
    verify = scope["verify"]
    body, t, delivery = b'{"run_id": "r1"}', int(time.time()), "r1:1:finished"
    headers = {
        "jobwire-delivery": delivery,
        "jobwire-signature": sign(SECRET.encode(), body, t, delivery=delivery),
    }
    assert verify(SECRET.encode(), headers, body) is True  # type: ignore[operator]
    assert verify(SECRET.encode(), headers, body + b" ") is False  # type: ignore[operator]
    assert verify(b"other", headers, body) is False  # type: ignore[operator]
    old = {**headers, "jobwire-signature": sign(SECRET.encode(), body, t - 3600, delivery=delivery)}
    assert verify(SECRET.encode(), old, body) is False  # type: ignore[operator]


def test_readme_links_to_the_webhook_recipes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/api.md#webhooks)" in readme
    assert "\n## Webhooks\n" in (ROOT / "docs" / "api.md").read_text()
    assert len(blocks("sh")) >= 1 and len(blocks("python")) >= 2
