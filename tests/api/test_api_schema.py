"""The HTTP layer on its own: routes and OpenAPI shape, auth rules, the error shape, masking.

`FakeEngine` overrides the Engine interface; `FakeStore` keeps dicts. No scheduler, no targets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter

from jobwire.api import BindRefusedError, create_app
from jobwire.api.sse import HEARTBEAT, status_frames
from jobwire.config import Settings
from jobwire.engine import Engine, JobNotFound, RunNotFound
from jobwire.engine.engine import Conflict, Forbidden, InvalidParams
from jobwire.engine.metrics import Metrics
from jobwire.engine.status import StatusHub
from jobwire.model import (
    Admission,
    Event,
    EventOutcome,
    Job,
    Run,
    RunState,
    StatusBlock,
    StatusDocument,
    Transition,
)
from jobwire.store import Activity, EventQuery, Page, PruneResult, Recorded, RunQuery, Store, StoredJob

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
V1 = "/api/v1"


# --------------------------------------------------------------------------- fakes


class FakeStore(Store):
    def __init__(self) -> None:
        self.jobs: dict[str, StoredJob] = {}
        self.runs: dict[str, Run] = {}
        self.events: dict[str, Event] = {}
        self.last_run_query: RunQuery | None = None

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def save_job(self, job: Job, origin: str) -> StoredJob:
        prev = self.jobs.get(job.name)
        paused = job.paused or (prev.paused if prev else False)
        self.jobs[job.name] = StoredJob(job, origin, paused, NOW)
        return self.jobs[job.name]

    async def get_job(self, name: str) -> StoredJob | None:
        return self.jobs.get(name)

    async def list_jobs(self) -> list[StoredJob]:
        return [self.jobs[n] for n in sorted(self.jobs)]

    async def delete_job(self, name: str) -> bool:
        return self.jobs.pop(name, None) is not None

    async def set_paused(self, name: str, paused: bool) -> StoredJob | None:
        s = self.jobs.get(name)
        if s is None:
            return None
        s.paused = paused
        return s

    async def record(self, batch: Any) -> list[Recorded]:
        raise NotImplementedError

    async def update_runs(self, runs: list[Run]) -> None:
        raise NotImplementedError

    async def get_run(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    async def get_run_by_key(self, key: str) -> Run | None:
        return next((r for r in self.runs.values() if r.key == key), None)

    async def list_runs(self, query: RunQuery) -> Page[Run]:
        self.last_run_query = query
        if query.cursor == "garbage":
            raise ValueError("malformed cursor")
        items = [
            r
            for r in self.runs.values()
            if (query.job is None or r.job == query.job)
            and (query.states is None or r.state in query.states)
            and (query.event_id is None or r.event_id == query.event_id)
        ]
        return Page(items[: query.limit], "next" if len(items) > query.limit else None)

    async def active_runs(self) -> list[Run]:
        return []

    async def get_event(self, event_id: str) -> Event | None:
        return self.events.get(event_id)

    async def list_events(self, query: EventQuery) -> Page[Event]:
        items = [e for e in self.events.values() if query.outcomes is None or e.outcome in query.outcomes]
        return Page(items[: query.limit])

    async def last_fire(self, job: str, trigger: str) -> datetime | None:
        return None

    async def last_fires(self) -> dict[tuple[str, str], datetime]:
        return {}

    async def last_runs(self, jobs: Sequence[str]) -> dict[str, Run]:
        return {}

    async def activity(
        self, since: datetime, bucket: timedelta, buckets: int, events_since: datetime | None = None
    ) -> Activity:
        return Activity()

    async def prune(self, job: str, keep: int, older_than: datetime) -> PruneResult:
        return PruneResult()

    async def prune_jobs(self, rules: Any) -> PruneResult:
        return PruneResult()


def make_run(run_id: str, job: str = "hello", state: RunState = RunState.succeeded, **kw: Any) -> Run:
    return Run(
        id=run_id,
        key=f"{job}/api/{run_id}",
        job=job,
        trigger="api",
        event_id=kw.pop("event_id", "e-" + run_id),
        state=state,
        created_at=NOW,
        history=[Transition(state=RunState.pending, at=NOW), Transition(state=state, at=NOW)],
        **kw,
    )


class FakeEngine(Engine):
    def __init__(self, settings: Settings, store: Store | None = None) -> None:  # no super(): nothing real
        self.settings = settings
        self.store = store or FakeStore()
        self.registry = CollectorRegistry()
        Counter("jobwire_events_total", "Events recorded", ["source"], registry=self.registry).labels(
            "api"
        ).inc()
        self._ready = True
        self.calls: list[tuple[str, Any]] = []
        self.docs: list[StatusDocument] = []
        self.log_chunks: list[bytes] = [b"hello\n", b"world\n"]
        self.idem: dict[str, Run] = {}
        self.metrics = Metrics()
        self.hub = StatusHub([], self.metrics, buffer=4, wake_interval=0)

    async def refresh_metrics(self) -> None:
        pass  # no launcher, no fleet queues to read

    @property
    def jobs(self) -> dict[str, StoredJob]:  # type: ignore[override]
        """The engine's in-memory definitions, here the fake store's."""
        return self.fake.jobs

    @property
    def fake(self) -> FakeStore:
        assert isinstance(self.store, FakeStore)
        return self.store

    @property
    def ready(self) -> bool:
        return self._ready

    def health(self) -> dict[str, Any]:
        return {"ready": self._ready, "problems": [] if self._ready else ["starting"], "tasks": [], "store": {}}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def put_job(self, job: Job, origin: str = "api") -> StoredJob:
        self.calls.append(("put_job", job))
        return await self.store.save_job(job, origin)

    async def delete_job(self, name: str) -> None:
        if not await self.store.delete_job(name):
            raise JobNotFound(f"no job named {name!r}")

    async def pause(self, name: str) -> StoredJob:
        s = await self.store.set_paused(name, True)
        if s is None:
            raise JobNotFound(f"no job named {name!r}")
        return s

    async def resume(self, name: str) -> StoredJob:
        s = await self.store.set_paused(name, False)
        if s is None:
            raise JobNotFound(f"no job named {name!r}")
        return s

    async def trigger(
        self,
        job: str,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        source: str = "api",
        yield_to_launch: bool = True,
    ) -> Admission:
        stored = await self.store.get_job(job)
        if stored is None:
            raise JobNotFound(f"no job named {job!r}")
        for k in params:
            if stored.job.param(k) is None:
                raise InvalidParams(f"params.{k}: not a declared parameter of job {job!r}")
        if idempotency_key and idempotency_key in self.idem:
            run = self.idem[idempotency_key]
            return Admission(
                event=Event(
                    id="e-dup",
                    job=job,
                    trigger="api",
                    source="api",
                    received_at=NOW,
                    outcome=EventOutcome.duplicate,
                    run_id=run.id,
                ),
                run=run,
            )
        run = make_run(f"r{len(self.fake.runs) + 1}", job, RunState.pending, params=params)
        self.fake.runs[run.id] = run
        if idempotency_key:
            self.idem[idempotency_key] = run
        event = Event(id=run.event_id, job=job, trigger="api", source="api", received_at=NOW, run_id=run.id)
        return Admission(event=event, run=run)

    def webhook_precheck(self, job: str, trigger_id: str | None, headers: dict[str, str]) -> Any:
        return None  # the fake checks the whole delivery in `webhook`

    async def webhook(
        self,
        job: str,
        trigger_id: str | None,
        body: bytes,
        headers: dict[str, str],
        checked: Any = None,
    ) -> Admission:
        self.calls.append(("webhook", (job, trigger_id, body, headers)))
        if headers.get("x-jobwire-signature") != "good":
            raise Forbidden("webhook signature rejected: bad signature")
        run = make_run("rw", job, RunState.pending)
        event = Event(id="ew", job=job, trigger=trigger_id or "webhook", source="webhook", received_at=NOW)
        return Admission(event=event, run=run)

    async def get_run(self, run_id: str) -> Run:
        run = await self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        return run

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> Run:
        run = await self.get_run(run_id)
        if run.state.terminal:
            raise Conflict(f"run {run_id} already ended ({run.state.value})")
        run.state = RunState.cancelled
        return run

    async def rerun(self, run_id: str, idempotency_key: str | None = None) -> Admission:
        orig = await self.get_run(run_id)
        return await self.trigger(orig.job, dict(orig.params), idempotency_key, source="rerun")

    async def callback(
        self, run_id: str, token: str, ok: bool, message: str | None, data: dict[str, Any]
    ) -> Run:
        self.calls.append(("callback", (run_id, token, ok, message, data)))
        if token != "cb-" + run_id:
            raise Forbidden("wrong callback token for this run")
        run = await self.get_run(run_id)
        run.state = RunState.succeeded if ok else RunState.failed
        return run

    async def run_log(self, run_id: str, follow: bool = False) -> AsyncIterator[bytes]:
        await self.get_run(run_id)
        for chunk in self.log_chunks:
            yield chunk



def doc(run_id: str, job: str = "hello", action: str = "running") -> StatusDocument:
    return StatusDocument(
        name=job,
        action=action,
        status=StatusBlock(active=1),
        run_id=run_id,
        event_id="e1",
        job=job,
        attempt=1,
        time=NOW,
    )


HELLO: dict[str, Any] = {
    "name": "hello",
    "description": "says hello",
    "triggers": ["api", {"type": "webhook", "id": "gh", "secret": "whsec-REAL"}],
    "target": {
        "type": "http",
        "url": "https://example.com/hook",
        "headers": {"Authorization": "Bearer downstream-REAL", "X-Plain": "visible"},
    },
    "parameters": [
        {"name": "who", "default": "world"},
        {"name": "password", "secret": True, "default": "pw-REAL"},
    ],
}

SEED003: dict[str, Any] = {
    "name": "CLI",
    "description": "From CLI",
    "schedule": "* * * * *",
    "job": {"callback_url": "https://example.com/cb", "http_method": "post", "payload": {}},
}


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("JOBWIRE_"):
            monkeypatch.delenv(k)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(settings())


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as c:
        yield c


def add_job(engine: FakeEngine, data: dict[str, Any] = HELLO, origin: str = "api") -> Job:
    job = Job.model_validate(data)
    engine.fake.jobs[job.name] = StoredJob(job, origin, False, NOW)
    return job


def assert_error(resp: Any, status: int, reason: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "reason", "code", "details"}
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    if reason is not None:
        assert err["reason"] == reason
    return dict(err)


# --------------------------------------------------------------------------- OpenAPI shape

ROUTES = [
    ("get", "/jobs"), ("post", "/jobs"),
    ("get", "/jobs/{name}"), ("put", "/jobs/{name}"), ("patch", "/jobs/{name}"), ("delete", "/jobs/{name}"),
    ("post", "/jobs/{name}/pause"), ("post", "/jobs/{name}/resume"), ("post", "/jobs/{name}/runs"),
    ("post", "/jobs/{name}/webhook"), ("post", "/jobs/{name}/webhook/{trigger_id}"),
    ("get", "/runs"), ("get", "/runs/{run_id}"), ("get", "/runs/{run_id}/log"),
    ("post", "/runs/{run_id}/cancel"), ("post", "/runs/{run_id}/rerun"), ("post", "/runs/{run_id}/callback"),
    ("get", "/events"), ("get", "/events/{event_id}"),
    ("get", "/stream"), ("get", "/metrics"), ("get", "/healthz"), ("get", "/readyz"),
    ("post", "/seed002/schedule"), ("get", "/seed002/list"), ("get", "/seed002/status/{name}"),
    ("post", "/seed002/callback/{name}"),
    ("get", "/whoami"), ("get", "/dashboard/overview"), ("get", "/dashboard/jobs"), ("get", "/dashboard/jobs/{name}"),
]  # fmt: skip


def test_every_route_is_in_openapi(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for method, path in ROUTES:
        assert method in paths.get(V1 + path, {}), f"{method.upper()} {V1}{path} missing"
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert documented == {(m, V1 + p) for m, p in ROUTES}
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiToken"]["scheme"].lower() == "bearer"
    # read routes and write routes declare the API token; webhooks and probes do not
    assert paths[V1 + "/jobs"]["get"]["security"] == [{"ApiToken": []}]
    assert "security" not in paths[V1 + "/jobs/{name}/webhook"]["post"]
    assert "security" not in paths[V1 + "/healthz"]["get"]
    assert paths[V1 + "/runs/{run_id}/callback"]["post"]["security"] == [{"RunCallbackToken": []}]
    assert paths[V1 + "/seed002/callback/{name}"]["post"]["security"] == [{"RunCallbackToken": []}]
    # list endpoints document the page shape and the limit bound
    page = spec["components"]["schemas"]["RunPage"]["properties"]
    assert set(page) == {"items", "next_cursor"}
    limit = next(p for p in paths[V1 + "/runs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 500
    assert "ErrorBody" in spec["components"]["schemas"]


def test_docs_and_the_dashboard_at_root(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<script type="module" src="/static/dashboard/js/main.js">' in r.text
    assert client.get("/static/dashboard/js/main.js").status_code == 200


def test_docs_work_offline_from_the_packages_own_assets(secured: tuple[TestClient, FakeEngine]) -> None:
    """/docs names only URLs of this server, and each answers without a token (tokens are set)."""
    import re

    client, _ = secured
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert len(urls) >= 4, r.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
    assert "cdn" not in r.text and "https://" not in r.text and "http://" not in r.text
    expected = {
        "swagger-ui-bundle.js": ("text/javascript", "SwaggerUIBundle"),
        "swagger-ui.css": ("text/css", ".swagger-ui"),
        "favicon-32x32.png": ("image/png", "PNG"),
    }
    assets = [u for u in urls if u.startswith("/static/swagger/")]
    assert {u.split("?")[0].rsplit("/", 1)[1] for u in assets} == set(expected)
    for url in assets:
        a = client.get(url)
        ctype, marker = expected[url.split("?")[0].rsplit("/", 1)[1]]
        assert a.status_code == 200, url
        assert a.headers["content-type"].split(";")[0] in (ctype, ctype.replace("text/", "application/")), url
        assert marker.encode() in a.content[:200_000] or marker in a.text, url
    assert client.get("/openapi.json").status_code == 200  # what the page loads, also open
    lic = client.get("/static/swagger/LICENSE")
    assert lic.status_code == 200 and "Apache License" in lic.text


# --------------------------------------------------------------------------- auth


def test_loopback_without_token_needs_no_auth(client: TestClient, engine: FakeEngine) -> None:
    add_job(engine)
    assert client.get(V1 + "/jobs").status_code == 200
    assert client.post(V1 + "/jobs/hello/pause").status_code == 200


@pytest.fixture
def secured() -> Iterator[tuple[TestClient, FakeEngine]]:
    eng = FakeEngine(settings(api_tokens="w-token:read,write;r-token:read"))
    add_job(eng)
    eng.fake.runs["r1"] = make_run("r1", state=RunState.running)
    with TestClient(create_app(eng)) as c:
        yield c, eng


def test_tokens_configured(secured: tuple[TestClient, FakeEngine]) -> None:
    c, _ = secured
    read, write = {"Authorization": "Bearer r-token"}, {"Authorization": "Bearer w-token"}

    err = assert_error(c.get(V1 + "/jobs"), 401, "Unauthorized")
    assert "Bearer" in err["message"]
    assert c.get(V1 + "/jobs").headers["www-authenticate"].startswith("Bearer")
    assert_error(c.get(V1 + "/jobs", headers={"Authorization": "Bearer nope"}), 401)
    assert_error(c.get(V1 + "/jobs", headers={"Authorization": "Basic dTpw"}), 401)
    assert c.get(V1 + "/jobs", headers=read).status_code == 200
    assert c.get(V1 + "/runs/r1", headers=read).status_code == 200
    assert c.get(V1 + "/metrics", headers=read).status_code == 200
    assert_error(c.get(V1 + "/metrics"), 401)
    assert_error(c.get("/metrics"), 401)  # the unprefixed alias is protected too
    assert c.get(V1 + "/runs/r1/log", headers=read).status_code == 200

    assert_error(c.post(V1 + "/jobs/hello/pause", headers=read), 403, "Forbidden")
    assert_error(c.post(V1 + "/jobs", json=SEED003, headers=read), 403)
    assert_error(c.post(V1 + "/runs/r1/cancel", headers=read), 403)
    assert c.post(V1 + "/jobs/hello/pause", headers=write).status_code == 200
    assert c.post(V1 + "/jobs", json=SEED003, headers=write).status_code == 201

    # probes are open
    assert c.get(V1 + "/healthz").status_code == 200
    assert c.get("/healthz").status_code == 200
    assert c.get(V1 + "/readyz").status_code == 200


def test_tokens_never_echoed(secured: tuple[TestClient, FakeEngine]) -> None:
    c, _ = secured
    r = c.get(V1 + "/jobs", headers={"Authorization": "Bearer guessed-secret-value"})
    assert "guessed-secret-value" not in r.text
    r = c.post(V1 + "/jobs/hello/pause", headers={"Authorization": "Bearer r-token"})
    assert "r-token" not in r.text


def test_callback_uses_run_token_not_api_token(secured: tuple[TestClient, FakeEngine]) -> None:
    c, eng = secured
    assert_error(c.post(V1 + "/runs/r1/callback", json={"ok": True}), 401)
    r = c.post(V1 + "/runs/r1/callback", json={"ok": True}, headers={"Authorization": "Bearer w-token"})
    assert_error(r, 403, "Forbidden")  # an API token is not the run's callback token
    r = c.post(
        V1 + "/runs/r1/callback",
        json={"ok": False, "message": "disk full", "data": {"n": 1}},
        headers={"Authorization": "Bearer cb-r1"},
    )
    assert r.status_code == 200 and r.json()["state"] == "failed"
    assert eng.calls[-1] == ("callback", ("r1", "cb-r1", False, "disk full", {"n": 1}))
    bad = c.post(V1 + "/runs/r1/callback", json={"ok": "maybe"}, headers={"Authorization": "Bearer cb-r1"})
    assert_error(bad, 422)


def test_webhook_needs_no_api_token(secured: tuple[TestClient, FakeEngine]) -> None:
    c, eng = secured
    body = b'{"ref": "main"}'
    r = c.post(V1 + "/jobs/hello/webhook/gh", content=body, headers={"X-Jobwire-Signature": "good"})
    assert r.status_code == 201, r.text
    name, tid, raw, headers = eng.calls[-1][1]
    assert (name, tid, raw) == ("hello", "gh", body)
    assert headers["x-jobwire-signature"] == "good"
    assert_error(c.post(V1 + "/jobs/hello/webhook", content=body), 403, "Forbidden")


def test_non_loopback_without_token_refuses() -> None:
    with pytest.raises(BindRefusedError, match=r"JOBWIRE_API_TOKEN is required when binding to 0\.0\.0\.0"):
        create_app(FakeEngine(settings(host="0.0.0.0")))
    create_app(FakeEngine(settings(host="0.0.0.0", api_token="t")))  # with a token it starts


def test_readyz_follows_engine(client: TestClient, engine: FakeEngine) -> None:
    engine._ready = False
    assert client.get(V1 + "/readyz").status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get(V1 + "/healthz").status_code == 200
    engine._ready = True
    assert client.get(V1 + "/readyz").status_code == 200


# --------------------------------------------------------------------------- error shape


def test_error_shape_everywhere(client: TestClient, engine: FakeEngine) -> None:
    assert_error(client.get("/no/such/thing"), 404, "NotFound")
    assert_error(client.get(V1 + "/jobs/missing"), 404, "JobNotFound")
    assert_error(client.get(V1 + "/runs/missing"), 404, "RunNotFound")
    assert_error(client.get(V1 + "/events/missing"), 404, "EventNotFound")
    assert_error(client.delete(V1 + "/runs"), 405, "MethodNotAllowed")
    err = assert_error(client.get(V1 + "/runs", params={"limit": 1000}), 422, "ValidationError")
    assert err["details"][0]["path"] == "query.limit"
    err = assert_error(client.get(V1 + "/runs", params={"state": "exploded"}), 422)
    assert err["details"] == [{"path": "query.state", "message": err["details"][0]["message"]}]
    assert_error(client.get(V1 + "/runs", params={"cursor": "garbage"}), 422)
    err = assert_error(
        client.post(V1 + "/jobs", content=b"[1, 2]", headers={"content-type": "application/json"}), 422
    )
    assert err["details"]
    assert_error(
        client.post(V1 + "/jobs", content=b"{not json", headers={"content-type": "application/json"}), 422
    )


def test_job_definition_errors_name_each_field(client: TestClient) -> None:
    bad = {**SEED003, "job": {"http_method": "post", "payload": {}}}
    err = assert_error(client.post(V1 + "/jobs", json=bad), 422, "InvalidJob")
    assert any(d["path"] == "job.callback_url" for d in err["details"]), err
    bad = {"name": "x", "triggers": [{"cron": "61 * * * *"}], "target": {"type": "http", "url": "ftp://x"}}
    err = assert_error(client.post(V1 + "/jobs", json=bad), 422)
    paths = {d["path"] for d in err["details"]}
    assert "triggers[0].cron" in paths and "target.url" in paths


# --------------------------------------------------------------------------- jobs


def test_seed003_job_is_accepted(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(V1 + "/jobs", json=SEED003)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["name"] == "CLI" and job["origin"] == "api" and job["paused"] is False
    assert job["triggers"][0]["type"] == "cron" and job["triggers"][0]["cron"] == "* * * * *"
    assert job["target"]["type"] == "http" and job["target"]["method"] == "POST"
    assert job["target"]["url"] == "https://example.com/cb"
    assert "CLI" in engine.fake.jobs
    assert_error(client.post(V1 + "/jobs", json=SEED003), 409, "Conflict")
    assert [j["name"] for j in client.get(V1 + "/jobs").json()["items"]] == ["CLI"]


def test_seed003_form_is_shown_back_and_round_trips(client: TestClient, engine: FakeEngine) -> None:
    assert client.post(V1 + "/jobs", json=SEED003).status_code == 201
    r = client.get(V1 + "/jobs/CLI", params={"format": "seed003"})
    assert r.status_code == 200, r.text
    assert r.json() == SEED003
    before = engine.fake.jobs["CLI"].job
    # what was shown is accepted back as it is, and is the same job
    assert client.put(V1 + "/jobs/CLI", json=r.json()).status_code == 200
    assert engine.fake.jobs["CLI"].job == before
    # jobwire's form stays the default
    assert client.get(V1 + "/jobs/CLI").json()["triggers"][0]["id"] == "schedule"
    assert client.get(V1 + "/jobs/CLI", params={"format": "jobwire"}).json()["origin"] == "api"
    assert_error(client.get(V1 + "/jobs/CLI", params={"format": "yaml"}), 422)
    assert_error(client.get(V1 + "/jobs/nope", params={"format": "seed003"}), 404)


def test_seed003_form_refused_naming_what_it_cannot_hold(client: TestClient, engine: FakeEngine) -> None:
    body = {**SEED003, "job": {**SEED003["job"], "callback_url": "https://u:pw-REAL@example.com/cb"}}
    assert client.post(V1 + "/jobs", json=body).status_code == 201
    shown = client.get(V1 + "/jobs/CLI", params={"format": "seed003"})
    assert shown.status_code == 200 and "pw-REAL" not in shown.text  # URL password masked
    r = client.patch(V1 + "/jobs/CLI", json={"target": {"timeout": "5s"}, "retry": {"max_attempts": 3}})
    assert r.status_code == 200, r.text
    err = assert_error(client.get(V1 + "/jobs/CLI", params={"format": "seed003"}), 422, "NotSeed003")
    assert "seed 003's form" in err["message"]
    assert {d["path"] for d in err["details"]} == {"target.timeout", "retry"}
    add_job(engine, HELLO)
    err = assert_error(client.get(V1 + "/jobs/hello", params={"format": "seed003"}), 422, "NotSeed003")
    assert [d["path"] for d in err["details"]][:1] == ["triggers"]


def test_webhook_trigger_with_unset_secret_env_is_refused_at_definition(
    client: TestClient, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("API_TEST_HOOK_SECRET", raising=False)
    monkeypatch.setenv("API_TEST_EMPTY", "")
    body = {
        "name": "deploy",
        "triggers": ["api", {"webhook": {"secret_env": "API_TEST_HOOK_SECRET", "id": "gh"}}],
        "target": {"type": "local", "command": ["true"]},
    }
    for send in (
        lambda b: client.post(V1 + "/jobs", json=b),
        lambda b: client.put(V1 + "/jobs/deploy", json=b),
    ):
        err = assert_error(send(body), 422, "WebhookSecretUnset")
        assert "'gh'" in err["message"] and "API_TEST_HOOK_SECRET" in err["message"]
        assert "jobwire's environment" in err["message"] and "set API_TEST_HOOK_SECRET" in err["message"]
        assert err["details"][0]["path"] == "triggers[1].secret_env"
    assert "deploy" not in engine.fake.jobs
    empty = {**body, "triggers": [{"webhook": {"secret_env": "API_TEST_EMPTY"}}]}
    err = assert_error(client.post(V1 + "/jobs", json=empty), 422, "WebhookSecretUnset")
    assert "'webhook'" in err["message"] and "API_TEST_EMPTY" in err["message"]

    monkeypatch.setenv("API_TEST_HOOK_SECRET", "s3cret")
    assert client.post(V1 + "/jobs", json=body).status_code == 201
    # a patch is a definition too: the variable gone, the job cannot be changed until it is back
    monkeypatch.delenv("API_TEST_HOOK_SECRET")
    assert_error(client.patch(V1 + "/jobs/deploy", json={"description": "x"}), 422, "WebhookSecretUnset")
    # an inline secret needs no variable
    inline = {**body, "triggers": [{"webhook": {"secret": "inline-s3cret"}}]}
    assert client.put(V1 + "/jobs/deploy", json=inline).status_code == 200


def test_secrets_are_masked_and_survive_a_round_trip(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(V1 + "/jobs", json=HELLO)
    assert r.status_code == 201
    for resp in (r, client.get(V1 + "/jobs/hello"), client.get(V1 + "/jobs")):
        assert "REAL" not in resp.text
    job = client.get(V1 + "/jobs/hello").json()
    assert job["triggers"][1]["secret"] == "****"
    assert job["parameters"][1]["default"] == "****"
    assert job["parameters"][0]["default"] == "world"
    assert job["target"]["headers"] == {"Authorization": "****", "X-Plain": "visible"}

    # GET, edit, PUT back: the masked values keep the secrets the job has
    for key in ("origin", "paused", "updated_at"):
        job.pop(key)
    job["description"] = "edited"
    r = client.put(V1 + "/jobs/hello", json=job)
    assert r.status_code == 200, r.text
    stored = engine.fake.jobs["hello"].job
    assert stored.description == "edited"
    assert stored.triggers[1].secret == "whsec-REAL"  # type: ignore[union-attr]
    assert stored.parameters[1].default == "pw-REAL"
    assert stored.target.headers["Authorization"] == "Bearer downstream-REAL"  # type: ignore[union-attr]


def test_put_and_patch(client: TestClient, engine: FakeEngine) -> None:
    body = {k: v for k, v in SEED003.items() if k != "name"}
    r = client.put(V1 + "/jobs/CLI", json=body)
    assert r.status_code == 201, r.text  # created
    assert client.put(V1 + "/jobs/CLI", json=SEED003).status_code == 200  # replaced
    assert_error(client.put(V1 + "/jobs/CLI", json={**SEED003, "name": "other"}), 422, "NameMismatch")

    r = client.patch(V1 + "/jobs/CLI", json={"description": "patched", "target": {"timeout": "5s"}})
    assert r.status_code == 200, r.text
    job = engine.fake.jobs["CLI"].job
    assert job.description == "patched"
    assert job.target.timeout.total_seconds() == 5  # type: ignore[union-attr]
    assert job.target.url == "https://example.com/cb"  # type: ignore[union-attr]  # merged, not replaced
    r = client.patch(V1 + "/jobs/CLI", json={"description": None})
    assert r.status_code == 200 and engine.fake.jobs["CLI"].job.description == ""
    err = assert_error(client.patch(V1 + "/jobs/CLI", json={"target": {"url": "nope"}}), 422)
    assert err["details"][0]["path"] == "target.url"
    assert_error(client.patch(V1 + "/jobs/ghost", json={}), 404, "JobNotFound")

    assert client.delete(V1 + "/jobs/CLI").status_code == 204
    assert_error(client.get(V1 + "/jobs/CLI"), 404)


def test_file_jobs_are_read_only_but_pausable(client: TestClient, engine: FakeEngine) -> None:
    add_job(engine, origin="file:jobs/hello.yaml")
    for resp in (
        client.put(V1 + "/jobs/hello", json=HELLO),
        client.patch(V1 + "/jobs/hello", json={"description": "x"}),
        client.delete(V1 + "/jobs/hello"),
    ):
        err = assert_error(resp, 409, "DefinedInFile")
        assert "jobs/hello.yaml" in err["message"] and "edit the file" in err["message"]
    assert client.post(V1 + "/jobs/hello/pause").json()["paused"] is True
    assert client.post(V1 + "/jobs/hello/resume").json()["paused"] is False


# --------------------------------------------------------------------------- runs


def test_trigger_and_idempotency(client: TestClient, engine: FakeEngine) -> None:
    add_job(engine)
    r = client.post(V1 + "/jobs/hello/runs", json={"who": "bob", "password": "hunter2"})
    assert r.status_code == 201, r.text
    assert r.json()["params"] == {"who": "bob", "password": "****"}
    assert "Idempotency-Replayed" not in r.headers

    first = client.post(V1 + "/jobs/hello/runs", headers={"Idempotency-Key": "k1"})
    again = client.post(V1 + "/jobs/hello/runs", headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["Idempotency-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]

    err = assert_error(client.post(V1 + "/jobs/hello/runs", json={"colour": "red"}), 422, "InvalidParameters")
    assert "colour" in err["message"]
    assert_error(client.post(V1 + "/jobs/ghost/runs"), 404, "JobNotFound")
    assert client.post(V1 + "/jobs/hello/runs").status_code == 201  # no body: no parameters


def test_runs_list_show_cancel_rerun(client: TestClient, engine: FakeEngine) -> None:
    add_job(engine)
    engine.fake.runs["r1"] = make_run(
        "r1", state=RunState.running, params={"who": "a", "password": "pw"}, http_status=None
    )
    engine.fake.runs["r2"] = make_run("r2", state=RunState.failed, exit_code=3)
    page = client.get(
        V1 + "/runs", params=[("state", "running,failed"), ("job", "hello"), ("limit", "1")]
    ).json()
    assert set(page) == {"items", "next_cursor"} and len(page["items"]) == 1 and page["next_cursor"] == "next"
    q = engine.fake.last_run_query
    assert q is not None and q.states == [RunState.running, RunState.failed] and q.job == "hello"
    client.get(
        V1 + "/runs", params=[("state", "failed"), ("state", "timed_out"), ("since", "2026-01-01T00:00:00")]
    )
    q = engine.fake.last_run_query
    assert q is not None and q.states == [RunState.failed, RunState.timed_out]
    assert q.since is not None and q.since.tzinfo is not None

    run = client.get(V1 + "/runs/r1").json()
    assert run["params"] == {"who": "a", "password": "****"}
    assert [h["state"] for h in run["history"]] == ["pending", "running"]
    assert "pw" not in json.dumps(client.get(V1 + "/runs").json()["items"])

    assert client.post(V1 + "/runs/r1/cancel").json()["state"] == "cancelled"
    assert_error(client.post(V1 + "/runs/r2/cancel"), 409, "Conflict")
    r = client.post(V1 + "/runs/r2/rerun")
    assert r.status_code == 201 and r.json()["id"] != "r2"


def test_run_log(client: TestClient, engine: FakeEngine) -> None:
    engine.fake.runs["r1"] = make_run("r1")
    r = client.get(V1 + "/runs/r1/log")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "hello\nworld\n"
    assert client.get(V1 + "/runs/r1/log", params={"follow": "true"}).text == "hello\nworld\n"
    assert_error(client.get(V1 + "/runs/nope/log"), 404, "RunNotFound")
    engine.log_chunks = []
    assert client.get(V1 + "/runs/r1/log").text == ""


# --------------------------------------------------------------------------- events


def test_event_lineage(client: TestClient, engine: FakeEngine) -> None:
    add_job(engine)
    engine.fake.runs["r1"] = make_run("r1", event_id="e1", params={"password": "pw"})
    engine.fake.events["e1"] = Event(
        id="e1", job="hello", trigger="api", source="api", received_at=NOW, run_id="r1"
    )
    engine.fake.events["e2"] = Event(
        id="e2",
        job="hello",
        trigger="api",
        source="api",
        received_at=NOW,
        outcome=EventOutcome.duplicate,
        run_id="r1",
    )
    engine.fake.events["e3"] = Event(
        id="e3",
        job="hello",
        trigger="cron",
        source="cron",
        received_at=NOW,
        outcome=EventOutcome.paused,
        reason="the job is paused",
    )
    made = client.get(V1 + "/events/e1").json()
    assert [r["id"] for r in made["runs"]] == ["r1"] and made["reason"] is None
    assert made["runs"][0]["params"] == {"password": "****"}
    dup = client.get(V1 + "/events/e2").json()
    assert [r["id"] for r in dup["runs"]] == ["r1"] and "run key" in dup["reason"]
    none = client.get(V1 + "/events/e3").json()
    assert none["runs"] == [] and none["reason"] == "the job is paused"
    page = client.get(V1 + "/events", params={"outcome": "paused,duplicate"}).json()
    assert {e["id"] for e in page["items"]} == {"e2", "e3"}
    assert_error(client.get(V1 + "/events", params={"outcome": "weird"}), 422)


# --------------------------------------------------------------------------- system


def test_metrics(client: TestClient) -> None:
    r = client.get(V1 + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'jobwire_events_total{source="api"} 1.0' in r.text
    assert client.get("/metrics").text == r.text


def sse_blocks(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "event" in fields:
            out.append(fields)
    return out


def test_stream_sse_format_and_job_filter(client: TestClient, engine: FakeEngine) -> None:
    for d in (doc("ra"), doc("rb", job="other"), doc("ra", action="succeeded")):
        engine.hub.publish(d)
    first = engine.hub.ring.first
    engine.hub.ring.close()  # the stream ends once everything kept is sent
    r = client.get(V1 + "/stream", params={"job": "hello"}, headers={"Last-Event-ID": str(first - 1)})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith(": connected\n")
    blocks = sse_blocks(r.text)
    assert [b["event"] for b in blocks] == ["status", "status"]
    assert [int(b["id"]) for b in blocks] == [first, first + 2]  # sequence numbers; `other` filtered out
    assert [json.loads(b["data"])["action"] for b in blocks] == ["running", "succeeded"]


def test_stream_resumes_after_last_event_id(client: TestClient, engine: FakeEngine) -> None:
    for i in range(3):
        engine.hub.publish(doc(f"r{i}"))
    engine.hub.ring.close()
    second = engine.hub.ring.first + 1
    r = client.get(V1 + "/stream", headers={"Last-Event-ID": str(second)})
    assert [json.loads(b["data"])["run_id"] for b in sse_blocks(r.text)] == ["r2"]


def test_stream_tells_a_client_what_it_missed(client: TestClient, engine: FakeEngine) -> None:
    start = engine.hub.ring.last
    for i in range(7):  # the fake hub keeps 4
        engine.hub.publish(doc(f"r{i}"))
    engine.hub.ring.close()
    blocks = sse_blocks(client.get(V1 + "/stream", headers={"Last-Event-ID": str(start)}).text)
    assert blocks[0]["event"] == "lagged"
    lag = json.loads(blocks[0]["data"])
    assert (lag["missed"], lag["first"], lag["last"]) == (3, start + 1, start + 3)
    assert int(blocks[0]["id"]) == start + 3  # resuming from the notice does not repeat it
    assert [json.loads(b["data"])["run_id"] for b in blocks[1:]] == ["r3", "r4", "r5", "r6"]
    assert engine.metrics.stream_missed._value.get() == 3


@pytest.mark.parametrize("last_id", ["12", "not-a-number", "99999999999999999999"])
def test_stream_says_when_a_last_event_id_cannot_be_resumed(
    client: TestClient, engine: FakeEngine, last_id: str
) -> None:
    engine.hub.ring.close()
    blocks = sse_blocks(client.get(V1 + "/stream", headers={"Last-Event-ID": last_id}).text)
    assert blocks[0]["event"] == "lagged" and "id" not in blocks[0]
    lag = json.loads(blocks[0]["data"])
    assert lag["missed"] is None and "GET /runs" in lag["reason"]


async def test_stream_heartbeat_and_cleanup() -> None:
    hub = StatusHub([], Metrics(), wake_interval=0)
    gen = status_frames(hub.subscribe(), None, heartbeat=0.05)
    assert (await anext(gen)).startswith(b": connected")
    assert hub._readers == 1
    assert await anext(gen) == HEARTBEAT
    assert await anext(gen) == HEARTBEAT
    hub.publish(doc("rq"))
    assert (await anext(gen)).startswith(b"event: status\nid: %d\n" % hub.ring.last)
    await gen.aclose()
    assert hub._readers == 0
