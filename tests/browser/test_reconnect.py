"""A lost live stream reconnects: `jobwire serve` stops and starts again on the same port while the
dashboard is open; the page says so, comes back to `Live` on its own, re-reads what it shows, and
then follows new runs again without a reload."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support.server import Server

JOBS = """
jobs:
  - name: hello
    triggers: [api]
    target: {type: local, command: ["echo", "hello"]}
"""


def test_the_stream_reconnects_after_the_server_restarts(
    page: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("reconnect")
    (tmp / "jobs.yaml").write_text(JOBS)
    srv = Server(tmp / "data", tmp / "jobs.yaml")  # loopback, no token: open access
    with srv:
        page.goto(f"{srv.url}/#/runs?job=hello")
        expect(page.locator("#live")).to_have_text("Live")
        expect(page.locator("#who")).to_have_text("Open access (local)")
        with srv.client() as c:
            first = c.post("/jobs/hello/runs", json={}).json()
        expect(page.locator(f'tr[data-run="{first["id"]}"] .badge')).to_have_text("succeeded")
    expect(page.locator("#live")).not_to_have_text("Live")  # stopped: the page says it is not live
    with Server(tmp / "data", tmp / "jobs.yaml", port=srv.port) as again:
        expect(page.locator("#live")).to_have_text("Live")
        with again.client() as c:
            second = c.post("/jobs/hello/runs", json={}).json()
        expect(page.locator(f'tr[data-run="{second["id"]}"] .badge')).to_have_text("succeeded")
        expect(page.locator(f'tr[data-run="{first["id"]}"]')).to_have_count(1)


def test_a_token_refused_after_a_restart_brings_the_sign_in_back(
    page: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Signed in, then jobwire restarts with other tokens (the one in the tab is revoked): the
    page does not keep showing stale data as if live; it asks for a token again and says why."""
    tmp = tmp_path_factory.mktemp("revoked")
    (tmp / "jobs.yaml").write_text(JOBS)
    old, new = "old-token-51c0de", "new-token-0be7a2"
    srv = Server(tmp / "data", tmp / "jobs.yaml", JOBWIRE_API_TOKENS=f"{old}:read,write")
    with srv:
        page.goto(f"{srv.url}/#/runs")
        page.get_by_label("API token").fill(old)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#live")).to_have_text("Live")
        expect(page.get_by_role("heading", name="Runs", level=1)).to_be_visible()
    with Server(tmp / "data", tmp / "jobs.yaml", port=srv.port, JOBWIRE_API_TOKENS=f"{new}:read,write"):
        expect(page.get_by_role("heading", name="Sign in to jobwire")).to_be_visible()
        expect(page.locator("#signin-status")).to_contain_text("Your token was refused")
        expect(page.locator("#signin-status")).to_contain_text("sign in again")
        assert page.evaluate("() => sessionStorage.getItem('jobwire.token')") is None
        page.get_by_label("API token").fill(new)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#live")).to_have_text("Live")
        expect(page.get_by_role("heading", name="Runs", level=1)).to_be_visible()
