"""What tests/browser/test_dashboard.py leaves out of issue 11's list, in headless Chromium against
a real `jobwire serve` with real runs: the overview's parts (chart, running now, recent failures
with their reason, next fires, events per source, health), the runs list's filters (state, trigger,
time), a run page's attempts, HTTP status, causing event and its payload, Run again, the Run form's
required field, and the lineage of an overlapping and an invalid event."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.server import Server, free_port
from tests.support.waiting import eventually_sync

TOKEN = "pages-write-token-8f2d41"


def jobs_yaml(port: int) -> str:
    return f"""
jobs:
  - name: nightly
    triggers: [api, {{cron: "30 2 * * *", timezone: Asia/Tokyo}}]
    target: {{type: local, command: ["true"]}}
  - name: fails
    triggers: [api]
    target: {{type: local, command: ["sh", "-c", "echo nope >&2; exit 4"]}}
  - name: flaky
    triggers: [api]
    retry: {{max_attempts: 2, backoff: 100ms}}
    target: {{type: local, command: ["sh", "-c", "exit 5"]}}
  - name: sleeper
    triggers: [api]
    concurrency: {{policy: forbid}}
    timeout: 2m
    target: {{type: local, command: ["sleep", "120"]}}
  - name: ask
    triggers: [api]
    parameters:
      - {{name: region, type: string, required: true}}
      - {{name: count, type: integer, default: 1}}
    target: {{type: local, command: ["sh", "-c", 'echo "region=$JOBWIRE_PARAM_REGION"']}}
  - name: ping
    triggers: [api]
    target: {{type: http, url: "http://127.0.0.1:{port}/healthz", method: GET, allow_private: true}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("pages")
    port = free_port()
    jobs = tmp / "jobs.yaml"
    jobs.write_text(jobs_yaml(port))
    with Server(
        tmp / "data", jobs, port=port, JOBWIRE_API_TOKENS=f"{TOKEN}:read,write", JOBWIRE_MAX_RUNNING_ATTEMPTS="50"
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client(TOKEN) as c:
        yield c


def sign_in(page: Any, server: Server, path: str = "/") -> None:
    page.goto(f"{server.url}/#{path}")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#live")).to_have_text("Live")


def ended(api: httpx.Client, run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = api.get(f"/runs/{run_id}").json()
    return run if run["state"] not in ("pending", "queued", "running") else None


def section(page: Any, name: str) -> Any:
    """The page's <section> under the heading `name` (its table's scroll region has the same name)."""
    return page.locator("section", has=page.get_by_role("heading", name=name, exact=True))


def test_overview_shows_each_of_its_parts(page: Any, server: Server, api: httpx.Client) -> None:
    failed = api.post("/jobs/fails/runs", json={}).json()
    eventually_sync(lambda: ended(api, failed["id"]), 30, "the failing run to end")
    sleeping = api.post("/jobs/sleeper/runs", json={}).json()
    try:
        eventually_sync(lambda: api.get(f"/runs/{sleeping['id']}").json()["state"] == "running", 30, "sleeper to run")
        sign_in(page, server, "/")
        expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
        chart = section(page, "Runs in the last hour")
        expect(chart.locator("figcaption")).to_contain_text(re.compile(r"\d+ runs in the last hour: .*1 running"))
        expect(chart.locator("figcaption")).to_contain_text("failed")
        expect(chart.locator("svg rect.bar").first).to_be_attached()
        expect(chart).to_contain_text("6 jobs, 0 paused.")
        expect(section(page, "Running now").locator(f'tr[data-run="{sleeping["id"]}"]')).to_contain_text("sleeper")
        failure = section(page, "Recent failures").locator(f'tr[data-run="{failed["id"]}"]')
        expect(failure).to_contain_text("fails")
        expect(failure).to_contain_text("exited with code 4")
        expect(section(page, "Next fires")).to_contain_text("nightly")
        rates = section(page, "Events per source (last hour)")
        expect(rates.locator("tr", has_text="api")).to_contain_text("/min")
        health = section(page, "Health")
        expect(health.locator("#readiness")).to_have_text("Ready")
        expect(health).to_contain_text("store writes")
        expect(health).to_contain_text("jobwire-scheduler")
        # the local target's places (JOBWIRE_MAX_RUNNING_ATTEMPTS): the sleeper holds one, nothing waits
        places = health.locator("tr", has_text="launch backlog local")
        expect(places).to_contain_text("no wait")
        expect(places).to_contain_text(re.compile(r"[1-9]\d* of 50 running"))
        # the day window is its own chart
        page.get_by_role("link", name="Last day").click()
        expect(section(page, "Runs in the last day").locator("figcaption")).to_contain_text("runs in the last day")
        # live: the run that ends leaves "Running now" without a reload
        page.get_by_role("link", name="Last hour").click()
        expect(section(page, "Running now").locator(f'tr[data-run="{sleeping["id"]}"]')).to_have_count(1)
        api.post(f"/runs/{sleeping['id']}/cancel")
        expect(section(page, "Running now").locator(f'tr[data-run="{sleeping["id"]}"]')).to_have_count(0)
    finally:
        api.post(f"/runs/{sleeping['id']}/cancel")


def test_runs_filter_by_state_trigger_and_time(page: Any, server: Server, api: httpx.Client) -> None:
    ok = api.post("/jobs/nightly/runs", json={}).json()
    bad = api.post("/jobs/fails/runs", json={}).json()
    for run in (ok, bad):
        eventually_sync(lambda run=run: ended(api, run["id"]), 30, "the runs to end")
    sign_in(page, server, "/runs")
    runs = page.get_by_role("region", name="Runs")
    expect(runs.locator(f'tr[data-run="{ok["id"]}"]')).to_have_count(1)
    expect(runs.locator(f'tr[data-run="{bad["id"]}"]')).to_have_count(1)

    page.get_by_label("State").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"state=failed"))
    expect(runs.locator(f'tr[data-run="{bad["id"]}"]')).to_have_count(1)
    expect(runs.locator(f'tr[data-run="{ok["id"]}"]')).to_have_count(0)
    states = runs.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert states and set(states) == {"failed"}, states

    page.get_by_label("State").select_option("")
    page.get_by_label("Job").fill("nightly")
    page.get_by_label("Trigger").fill("api")
    page.get_by_role("button", name="Filter").click()
    expect(runs.locator(f'tr[data-run="{ok["id"]}"]')).to_have_count(1)
    page.get_by_label("Trigger").fill("cron")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"trigger=cron"))
    expect(page.get_by_text("No runs match.")).to_be_visible()

    page.get_by_label("Trigger").fill("")
    page.get_by_label("Created from").fill("2099-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"since=2099-"))
    expect(page.get_by_text("No runs match.")).to_be_visible()
    page.get_by_label("Created from").fill("2000-01-01T00:00")
    page.get_by_label("Created before").fill("2099-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"until=2099-"))
    expect(runs.locator(f'tr[data-run="{ok["id"]}"]')).to_have_count(1)


def test_run_page_attempts_http_status_event_payload_and_run_again(
    page: Any, server: Server, api: httpx.Client
) -> None:
    flaky = api.post("/jobs/flaky/runs", json={}).json()
    eventually_sync(lambda: ended(api, flaky["id"]), 30, "flaky to end")
    sign_in(page, server, f"/runs/{flaky['id']}")
    expect(page.locator("#run-state .badge")).to_have_text("failed")
    expect(page.locator(".timeline li", has_text="attempt 2").first).to_be_visible()
    expect(section(page, "Details").locator("dt", has_text="Attempt").locator("+ dd")).to_have_text("2")
    expect(page.locator("#run-error")).to_contain_text("code: 5")

    ping = api.post("/jobs/ping/runs", json={}).json()
    page.goto(f"{server.url}/#/runs/{ping['id']}")
    expect(page.locator("#run-state .badge")).to_have_text("succeeded")
    expect(section(page, "Details").locator("dt", has_text="HTTP status").locator("+ dd")).to_have_text("200")

    ask = api.post("/jobs/ask/runs", json={"region": "eu-west-9"}).json()
    page.goto(f"{server.url}/#/runs/{ask['id']}")
    expect(page.locator("#run-state .badge")).to_have_text("succeeded")
    event = section(page, "Causing event")
    expect(event.get_by_role("link", name=ask["event_id"])).to_be_visible()
    expect(event.get_by_label("Event payload")).to_contain_text('"region": "eu-west-9"')
    page.get_by_role("button", name="Run again").click()
    expect(page).not_to_have_url(re.compile(rf"#/runs/{ask['id']}$"))
    expect(page).to_have_url(re.compile(r"#/runs/r[0-9a-f]+$"))
    expect(page.locator("#run-state .badge")).to_have_text("succeeded")
    expect(page.locator("#log")).to_have_text("region=eu-west-9\n")


def test_the_run_form_requires_what_the_job_requires(page: Any, server: Server) -> None:
    sign_in(page, server, "/jobs/ask")
    form = page.locator("form.run-form")
    expect(form.get_by_label("region")).to_have_attribute("required", "")
    expect(form.locator("label[for=param-region]")).to_contain_text("(required)")
    expect(form.get_by_label("count")).to_have_value("1")
    form.get_by_role("button", name="Run ask").click()
    # the browser refuses the empty required field: no run, still on the job's page
    assert form.get_by_label("region").evaluate("el => el.validity.valueMissing") is True
    expect(page).to_have_url(re.compile(r"#/jobs/ask$"))
    form.get_by_label("region").fill("ap-east-1")
    form.get_by_role("button", name="Run ask").click()
    expect(page).to_have_url(re.compile(r"#/runs/r[0-9a-f]+$"))
    expect(page.locator("#log")).to_have_text("region=ap-east-1\n")


def test_why_no_run_overlap_and_invalid(page: Any, server: Server, api: httpx.Client) -> None:
    first = api.post("/jobs/sleeper/runs", json={}).json()
    try:
        eventually_sync(lambda: api.get(f"/runs/{first['id']}").json()["state"] == "running", 30, "sleeper to run")
        skipped = api.post("/jobs/sleeper/runs", json={})
        assert skipped.status_code == 409, skipped.text
    finally:
        api.post(f"/runs/{first['id']}/cancel")
    invalid = api.post("/jobs/ask/runs", json={"count": "many"})
    assert invalid.status_code == 422, invalid.text

    sign_in(page, server, "/events?outcome=overlap")
    row = page.locator('tr[data-outcome="overlap"]').first
    expect(row).to_contain_text("sleeper")
    row.get_by_role("link").first.click()
    expect(page.locator("#lineage")).to_contain_text("Overlap: skipped by the job's concurrency policy")

    page.goto(f"{server.url}/#/events")
    page.get_by_label("Outcome").select_option("invalid")
    page.get_by_label("Job").fill("ask")
    page.get_by_role("button", name="Filter").click()
    row = page.locator('tr[data-outcome="invalid"]').first
    expect(row).to_contain_text("region")  # the problems, in the list already
    row.get_by_role("link").first.click()
    expect(page.locator("#lineage")).to_contain_text("Invalid: its payload or parameters were invalid")
    expect(page.locator("#reason")).to_contain_text("region")
    expect(page.locator("#reason")).to_contain_text("count")


# Every decoded chunk of text the page reads (its live stream), from the moment it is reset.
RECORD_STREAM = """
(() => {
  const decode = TextDecoder.prototype.decode;
  window.__streamed = "";
  TextDecoder.prototype.decode = function (...args) {
    const text = decode.apply(this, args);
    window.__streamed += text;
    return text;
  };
})();
"""


@pytest.mark.parametrize(
    ("path", "first_read", "rows"),
    [
        ("/", "**/api/v1/dashboard/overview?*", "section:has(#h-running-now) tr"),
        ("/runs?job=sleeper&state=running", "**/api/v1/runs?*", "tbody tr"),
    ],
    ids=["overview", "runs-list"],
)
def test_a_change_while_the_page_first_reads_is_not_lost(
    page: Any, server: Server, api: httpx.Client, path: str, first_read: str, rows: str
) -> None:
    """A run ends after the server answered the page's first read but before the page listened
    to the stream: the page must still show that it ended (and not wait for the next change, or
    the overview's 30 s clock)."""
    created = api.post("/jobs/sleeper/runs", json={})
    assert created.status_code == 201, created.text
    run = created.json()
    try:
        eventually_sync(lambda: api.get(f"/runs/{run['id']}").json()["state"] == "running", 30, "sleeper to run")
        page.add_init_script(RECORD_STREAM)
        sign_in(page, server, "/jobs")
        held: list[str] = []
        problems: list[BaseException] = []

        def first_read_then_cancel(route: Any) -> None:
            if held:
                route.continue_()
                return
            held.append(route.request.url)
            try:
                before = route.fetch()  # the server's answer while the run still runs
                assert run["id"] in before.text()
                page.evaluate("() => { window.__streamed = ''; }")
                cancelled = api.post(f"/runs/{run['id']}/cancel")
                assert cancelled.status_code == 200, cancelled.text
                page.wait_for_function(
                    "id => new RegExp(`\"action\":\"cancelled\"[^\\n]*\"run_id\":\"${id}\"`).test(window.__streamed)",
                    arg=run["id"],
                )  # the page's stream has delivered the end: now the first read's answer arrives
                route.fulfill(response=before)
            except BaseException as exc:  # a route handler's error is only logged: keep it for the test
                problems.append(exc)
                route.abort()

        page.route(first_read, first_read_then_cancel)
        page.goto(f"{server.url}/#{path}")
        expect(page.locator("main table").first).to_be_visible()
        assert held and not problems, (held, problems)
        assert api.get(f"/runs/{run['id']}").json()["state"] == "cancelled"
        expect(page.locator(f'{rows}[data-run="{run["id"]}"]')).to_have_count(0)
    finally:
        page.unroute_all(behavior="ignoreErrors")
        api.post(f"/runs/{run['id']}/cancel")


def tab_to(page: Any, target: Any, limit: int = 60) -> None:
    """Press Tab until `target` has the focus (as a keyboard user moves through the page)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            return
    raise AssertionError(f"{target} never got the focus in {limit} Tabs")


def test_keyboard_only_sign_in_navigate_and_run(page: Any, server: Server) -> None:
    page.goto(server.url + "/")
    token = page.get_by_label("API token")
    expect(token).to_be_focused()
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    expect(page.locator("#live")).to_have_text("Live")
    page.reload()  # the token is kept for the tab: a fresh page, and its focus at the top
    expect(page.locator("#live")).to_have_text("Live")
    skip = page.get_by_role("link", name="Skip to the content")
    tab_to(page, skip, limit=1)  # the first stop on the page
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()  # still the page
    tab_to(page, page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
    tab_to(page, page.locator('tr[data-job="ask"]').get_by_role("link", name="ask"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Job ask")).to_be_visible()
    tab_to(page, page.locator("form.run-form").get_by_label("region"))
    page.keyboard.type("kb-north-1")
    tab_to(page, page.get_by_role("button", name="Run ask"), limit=5)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"#/runs/r[0-9a-f]+$"))
    expect(page.locator("#log")).to_have_text("region=kb-north-1\n")
