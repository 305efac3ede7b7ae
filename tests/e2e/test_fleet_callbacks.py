"""`callback.wait` on the runner fleet (`--role scheduler` + `--role runner` subprocesses, real
RabbitMQ on a vhost of the test's own): the runner makes the HTTP call; the run stays `running`
after it until the job calls back on the scheduler's API, which ends it."""

from __future__ import annotations

from pathlib import Path

from jobwire.engine.secret import CallbackTokens
from tests.support.brokers import RabbitVhost
from tests.support.fleet import KeyServer, runner, scheduler
from tests.support.waiting import eventually_sync


def test_a_fleet_run_waits_for_its_callback(tmp_path: Path, vhost: RabbitVhost) -> None:
    with KeyServer() as far:
        jobs = tmp_path / "jobs.yaml"
        jobs.write_text(
            f"""
jobs:
  - name: report
    target: {{type: http, url: "{far.url}", method: POST, timeout: 10s}}
    callback: {{wait: true, timeout: 5m}}
"""
        )
        sched = scheduler(tmp_path / "s", jobs, vhost.url)
        with runner(tmp_path / "r1", vhost.url), sched, sched.client() as c:
            tokens = CallbackTokens()
            tokens.load(tmp_path / "s")
            ids = [c.post("/jobs/report/runs", json={}).json()["id"] for _ in range(2)]
            eventually_sync(lambda: set(ids) <= set(far.keys()), timeout=60, what="both called by the runner")
            # the calls ended well; the runs wait for their callbacks
            for rid in ids:
                eventually_sync(
                    lambda rid=rid: "awaiting_callback" in c.get(f"/runs/{rid}").json()["target_status"],
                    timeout=60,
                    what="the wait recorded",
                )
                assert c.get(f"/runs/{rid}").json()["state"] == "running"
            good, bad = ids
            wrong = c.post(f"/runs/{good}/callback", json={"ok": True}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
            for rid, ok in ((good, True), (bad, False)):
                r = c.post(
                    f"/runs/{rid}/callback",
                    json={"ok": ok, "message": "done" if ok else "no rows", "data": {"rows": 3 if ok else 0}},
                    headers={"Authorization": f"Bearer {tokens.token(rid)}"},
                )
                assert r.status_code == 200, r.text

            def ended(rid: str) -> dict[str, object] | None:
                doc: dict[str, object] = c.get(f"/runs/{rid}").json()
                return doc if doc["state"] in ("succeeded", "failed") else None

            done = eventually_sync(lambda: ended(good), timeout=60, what="the good one ended")
            assert done["state"] == "succeeded" and done["http_status"] == 200
            failed = eventually_sync(lambda: ended(bad), timeout=60, what="the bad one ended")
            assert failed["state"] == "failed"
            assert failed["error"] == {"message": "no rows", "reason": "CallbackFailed"} or (
                isinstance(failed["error"], dict) and failed["error"]["reason"] == "CallbackFailed"
            )
            assert sorted(far.keys()) == sorted(ids), "each called once"
