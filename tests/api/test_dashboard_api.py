"""The API the dashboard reads (issue 11): /whoami, /dashboard/jobs (paged; cron in words and the
next fires in the job's time zone; last run), /dashboard/overview (runs by state in buckets, events
per source, running, failures, next fires), /runs?trigger=, and `/` serving the page — against a
real `jobwire serve`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from jobwire.crontext import describe
from tests.support.server import Server
from tests.support.waiting import eventually_sync

WRITE = "api-dash-write-3f9a"
READ = "api-dash-read-8c2e"
JOBS = "jobs:\n" + "".join(
    f"""  - name: job-{i:02d}
    triggers: [api, {{cron: "30 {i % 24} * * *", timezone: {zone}}}]
    target: {{type: local, command: ["sh", "-c", "exit {i % 2}"]}}
"""
    for i, zone in zip(range(23), ["Europe/Amsterdam", "America/New_York", "Asia/Tokyo"] * 8, strict=False)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dashapi")
    (tmp / "jobs.yaml").write_text(JOBS)
    with Server(tmp / "data", tmp / "jobs.yaml", JOBWIRE_API_TOKENS=f"{WRITE}:read,write;{READ}:read") as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client(WRITE) as c:
        yield c


def test_whoami_says_what_the_token_may_do_and_nothing_else(server: Server) -> None:
    with server.client(READ) as c:
        assert c.get("/whoami").json() == {"auth": True, "scopes": ["read"]}
    with server.client(WRITE) as c:
        assert c.get("/whoami").json() == {"auth": True, "scopes": ["read", "write"]}
    with server.client() as c:
        r = c.get("/whoami")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    with server.client("wrong") as c:
        assert c.get("/whoami").status_code == 401


def test_jobs_pages_walk_every_job_once_in_name_order(api: httpx.Client) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = api.get(
            "/dashboard/jobs", params={"limit": 5, **({"cursor": cursor} if cursor else {})}
        ).json()
        assert page["total"] == 23 and len(page["items"]) <= 5
        seen += [j["name"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"job-{i:02d}" for i in range(23)]
    filtered = api.get("/dashboard/jobs", params={"q": "JOB-1"}).json()
    assert [j["name"] for j in filtered["items"]] == [f"job-{i}" for i in range(10, 20)]
    assert filtered["total"] == 10 and filtered["next_cursor"] is None


def test_a_job_view_has_cron_in_words_and_the_next_fires_in_its_zone(api: httpx.Client) -> None:
    view = api.get("/dashboard/jobs/job-07").json()  # 30 7 * * * in America/New_York
    cron = next(t for t in view["triggers"] if t["type"] == "cron")
    assert (
        cron["text"]
        == f"{describe('30 7 * * *')} (America/New_York)"
        == "at 07:30 every day (America/New_York)"
    )
    fires = [datetime.fromisoformat(t) for t in cron["next"]]
    assert len(fires) == 3 and fires == sorted(fires)
    zone = ZoneInfo("America/New_York")
    for at in fires:
        assert at.utcoffset() == at.astimezone(zone).utcoffset()  # shown in the job's zone
        local = at.astimezone(zone)
        assert (local.hour, local.minute) == (7, 30)
    assert fires[1] - fires[0] in (timedelta(hours=23), timedelta(hours=24), timedelta(hours=25))
    api_trigger = next(t for t in view["triggers"] if t["type"] == "api")
    assert api_trigger["next"] == [] and api_trigger["text"] == "when called over the API"
    assert view["target"].startswith("local: sh -c")
    assert api.get("/dashboard/jobs/nope").status_code == 404


def test_last_run_overview_and_trigger_filter_follow_real_runs(api: httpx.Client) -> None:
    ok = api.post("/jobs/job-04/runs", json={}).json()
    bad = api.post("/jobs/job-05/runs", json={}).json()

    def ended() -> bool:
        states = [api.get(f"/runs/{r['id']}").json()["state"] for r in (ok, bad)]
        return states == ["succeeded", "failed"]

    eventually_sync(ended, timeout=20, what="both runs to end")
    page = api.get("/dashboard/jobs", params={"q": "job-0"}).json()
    last = {j["name"]: j["last_run"] for j in page["items"]}
    assert last["job-04"]["id"] == ok["id"] and last["job-04"]["state"] == "succeeded"
    assert last["job-05"]["state"] == "failed" and last["job-03"] is None

    ov = api.get("/dashboard/overview", params={"window": "hour"}).json()
    assert len(ov["buckets"]) == 12 and ov["bucket_seconds"] == 300
    assert ov["totals"].get("succeeded", 0) >= 1 and ov["totals"].get("failed", 0) >= 1
    assert sum(sum(b["counts"].values()) for b in ov["buckets"]) == sum(ov["totals"].values())
    assert any(r["id"] == bad["id"] for r in ov["failures"])
    api_rate = next(s for s in ov["sources"] if s["source"] == "api")
    assert api_rate["total"] >= 2 and api_rate["outcomes"]["run"] >= 2
    fires = [datetime.fromisoformat(f["at"]) for f in ov["next_fires"]]
    assert len(fires) == 10 and fires == sorted(fires) and ov["jobs"] == 23
    day = api.get("/dashboard/overview", params={"window": "day"}).json()
    assert len(day["buckets"]) == 24 and day["bucket_seconds"] == 3600

    assert [
        r["id"] for r in api.get("/runs", params={"job": "job-04", "trigger": "api"}).json()["items"]
    ] == [ok["id"]]
    assert api.get("/runs", params={"job": "job-04", "trigger": "cron"}).json()["items"] == []


def test_the_dashboard_page_is_served_open_with_a_strict_policy(server: Server) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
    for asset in ("/static/dashboard/app.css", "/static/dashboard/js/main.js", "/static/dashboard/js/api.js"):
        assert httpx.get(server.url + asset).status_code == 200, asset
    assert WRITE not in r.text and READ not in r.text


def test_a_trigger_urls_password_is_masked_and_kept_when_sent_back() -> None:
    """The job page shows the definition as GET /jobs/{name} does: a broker URL in a trigger keeps
    its host but not its password; PUT with the masked URL keeps the real one."""
    from jobwire.api.schemas import mask_job, unmask_job
    from jobwire.model import Job

    job = Job.model_validate(
        {
            "name": "x",
            "triggers": [{"amqp": {"url": "amqp://user:pw-canary-5e1@broker:5672/", "queue": "q"}}],
            "target": {"type": "local", "command": ["true"]},
        }
    )
    shown = mask_job(job)
    assert "pw-canary-5e1" not in str(shown)
    assert shown["triggers"][0]["url"].startswith("amqp://user:")
    assert unmask_job(shown, job)["triggers"][0]["url"] == "amqp://user:pw-canary-5e1@broker:5672/"
