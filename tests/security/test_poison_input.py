"""One bad request must not break other clients' requests (issue 7 #3): a value that cannot be
stored (a lone surrogate, `{"p": "\\ud800"}`, valid JSON but not valid Unicode) or nesting past
the limit is refused alone with a 4xx naming the field; concurrent good triggers in the same
group-commit batch all get their runs, and a time trigger keeps firing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobwire.jsonsafe import MAX_DEPTH, unstorable
from tests.support.server import Server

JOBS = """
jobs:
  - name: echo
    parameters: [{name: p, default: "x"}]
    target: {type: local, command: ["true"]}
  - name: tick
    triggers: [{interval: 1s}]
    target: {type: local, command: ["true"]}
"""
BAD = b'{"p": "\\ud800"}'


def test_checker_names_the_path() -> None:
    assert unstorable({"a": [1, {"b": "\ud800"}]}, "params") == (
        "params.a[1].b",
        "contains a lone surrogate (not valid Unicode text)",
    )
    assert unstorable({"ok": "é ✓ 😀"}) is None
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    assert unstorable(deep, "payload") is not None
    assert unstorable({"\udfff": 1}) is not None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    srv = Server(tmp_path / "data", jobs).start()
    yield srv
    srv.stop()


async def _burst(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        headers = {"content-type": "application/json"}
        tasks = []
        for i in range(60):
            body = BAD if i in (10, 30, 50) else b'{"p": "ok-%d"}' % i
            tasks.append(c.post("/api/v1/jobs/echo/runs", content=body, headers=headers))
        deep = b'{"p": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        tasks.append(c.post("/api/v1/jobs/echo/runs", content=deep, headers=headers))
        return list(await asyncio.gather(*tasks))


def test_a_bad_value_is_refused_alone(server: Server) -> None:
    responses = asyncio.run(_burst(server.url))
    bad = [responses[i] for i in (10, 30, 50)]
    good = [r for i, r in enumerate(responses[:60]) if i not in (10, 30, 50)]
    for r in bad:
        assert r.status_code == 422, r.text
        assert "params.p" in r.text and "surrogate" in r.text
    assert [r.status_code for r in good] == [201] * len(good), [r.text for r in good if r.status_code != 201]
    assert responses[60].status_code in (400, 422), responses[60].text
    deep = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(server.url + "/api/v1/jobs", content=deep, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    with server.client() as c:
        runs = c.get("/runs", params={"job": "echo", "limit": 200}).json()["items"]
        assert len(runs) == len(good)
        # the clock went on: the every-second job keeps being recorded after the bad requests
        from tests.support.waiting import eventually_sync

        before = len(c.get("/runs", params={"job": "tick", "limit": 200}).json()["items"])
        eventually_sync(
            lambda: len(c.get("/runs", params={"job": "tick", "limit": 200}).json()["items"]) >= before + 2,
            10,
            "two more ticks",
        )
    assert "Traceback" not in server.output()
