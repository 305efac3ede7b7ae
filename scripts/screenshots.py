"""Screenshots of every dashboard page into docs/img/: `make screenshots`.

Starts a real `jobwire serve` (tests/support/server.py) on a temporary data dir with a few demo jobs,
makes real runs (succeeded, failed, one still running, a duplicate and a paused event), then drives
Debian's Chromium (Playwright, no browser download) over each page, light and dark.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser.conftest import ARGS, CHROMIUM  # noqa: E402
from tests.support.server import Server  # noqa: E402
from tests.support.waiting import eventually_sync  # noqa: E402

OUT = REPO / "docs" / "img"
TOKEN = "screenshot-token"
HOOK = "screenshot-hook-secret"
JOBS = f"""
jobs:
  - name: nightly-report
    description: Build the daily report
    triggers:
      - {{cron: "30 2 * * *", timezone: Europe/Amsterdam}}
      - api
    parameters:
      - {{name: day, type: string, default: yesterday, description: Which day to report on}}
      - {{name: format, choices: [pdf, html, csv], default: pdf}}
      - {{name: pages, type: integer, default: 10}}
      - {{name: draft, type: boolean, default: false}}
    target: {{type: local, command: ["sh", "-c", 'echo "report for $JOBWIRE_PARAM_DAY ($JOBWIRE_PARAM_FORMAT)"; echo done']}}
  - name: sync-bucket
    description: Mirror the bucket every 15 minutes on weekdays
    triggers: [{{cron: "*/15 8-18 * * 1-5", timezone: America/New_York}}, api]
    target: {{type: local, command: ["sh", "-c", "echo syncing; echo 'access denied' >&2; exit 2"]}}
  - name: ingest
    description: Long-running ingestion
    triggers: [api, {{interval: 10m}}]
    timeout: 10m
    target: {{type: local, command: ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "batch $i ingested"; sleep 1; done']}}
  - name: cleanup
    triggers: [api, {{webhook: {{secret: {HOOK}}}}}, {{after: nightly-report}}]
    target: {{type: local, command: ["true"]}}
"""


def deliver(c, job: str) -> None:  # type: ignore[no-untyped-def]
    delivery, stamp, body = f"d-{time.time_ns()}", str(int(time.time())), b'{"bucket": "reports"}'
    mac = hmac.new(HOOK.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    c.post(
        f"/jobs/{job}/webhook",
        content=body,
        headers={"Jobwire-Delivery": delivery, "Jobwire-Signature": f"t={stamp},v1={mac}"},
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jobwire-shots-") as tmp:
        jobs = Path(tmp) / "jobs.yaml"
        jobs.write_text(JOBS)
        with Server(Path(tmp) / "data", jobs, JOBWIRE_API_TOKEN=TOKEN) as srv, srv.client(TOKEN) as c:
            for day in ("2026-12-01", "2026-12-02", "2026-12-03"):
                c.post("/jobs/nightly-report/runs", json={"day": day}, headers={"Idempotency-Key": day})
            c.post(
                "/jobs/nightly-report/runs",
                json={"day": "2026-12-03"},
                headers={"Idempotency-Key": "2026-12-03"},
            )
            for _ in range(2):
                c.post("/jobs/sync-bucket/runs", json={})
            running = c.post("/jobs/ingest/runs", json={}).json()
            c.post("/jobs/cleanup/pause")
            deliver(c, "cleanup")
            eventually_sync(
                lambda: not c.get("/runs", params={"state": "pending"}).json()["items"], 30, "runs started"
            )
            failed = c.get("/runs", params={"job": "sync-bucket"}).json()["items"][0]
            paused = c.get("/events", params={"outcome": "paused"}).json()["items"][0]
            pages = {
                "overview": "/",
                "jobs": "/jobs",
                "job": "/jobs/nightly-report",
                "runs": "/runs",
                "run": f"/runs/{running['id']}",
                "run-failed": f"/runs/{failed['id']}",
                "events": "/events",
                "event": f"/events/{paused['id']}",
            }
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                for scheme in ("light", "dark"):
                    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme=scheme)
                    page = ctx.new_page()
                    page.goto(srv.url + "/")
                    if scheme == "light":
                        page.screenshot(path=str(OUT / "dashboard-signin.png"))
                    page.get_by_label("API token").fill(TOKEN)
                    page.get_by_role("button", name="Sign in").click()
                    expect(page.locator("#live")).to_have_text("Live")
                    for name, path in pages.items():
                        if scheme == "dark" and name not in ("overview", "run"):
                            continue
                        page.goto(f"{srv.url}/#{path}")
                        expect(page.locator("main section, main [role=region]").first).to_be_visible()
                        if name == "run":
                            expect(page.locator("#log")).to_contain_text("batch 3")
                        suffix = "" if scheme == "light" else "-dark"
                        page.screenshot(
                            path=str(OUT / f"dashboard-{name}{suffix}.png"), full_page=name != "job"
                        )
                    ctx.close()
                phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
                page = phone.new_page()
                page.goto(srv.url + "/")
                page.get_by_label("API token").fill(TOKEN)
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("heading", name="Overview")).to_be_visible()
                expect(page.locator("main section").first).to_be_visible()
                page.screenshot(path=str(OUT / "dashboard-phone.png"))
                phone.close()
                browser.close()
            c.post(f"/runs/{running['id']}/cancel")
    for f in sorted(OUT.glob("dashboard-*.png")):
        print(f"{f.relative_to(REPO)}  {f.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
