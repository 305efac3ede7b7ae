"""Defect 12: a full disk must not lose time-trigger fires. `jobwire serve` with its data folder on
a small tmpfs and an every-second interval job: fill the disk, `/readyz` turns 503 naming the
failing store writes with fires pending, free the space, and every scheduled second in between is
recorded exactly once (no gap, no double) and `/readyz` is ready again."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import Server
from tests.support.tmpfs import fill, small_tmpfs
from tests.support.waiting import eventually_sync

JOBS = """\
jobs:
  - name: tick
    triggers: [{type: interval, interval: 1s}]
    catchup: {policy: all}
    target: {type: local, command: ["true"]}
"""


def readyz(srv: Server) -> tuple[int, dict[str, Any]]:
    r = httpx.get(srv.url + "/readyz", timeout=10)
    return r.status_code, r.json()


def tick_runs(c: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"job": "tick", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/runs", params=params).json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def test_fires_missed_while_the_disk_is_full_are_recorded_once_space_returns(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOBS)
    with small_tmpfs(tmp_path / "disk", "24m") as disk:
        srv = Server(disk / "data", jobs).start()
        try:
            with srv.client() as c:
                eventually_sync(lambda: len(tick_runs(c)) >= 2, 15, "the first fires to be recorded")
                filler = fill(disk)

                def failing() -> dict[str, Any] | None:
                    code, body = readyz(srv)
                    store = body.get("store") or {}
                    if code == 503 and store.get("failing") and store.get("fires_pending", 0) >= 3:
                        return body
                    return None

                body = eventually_sync(failing, 60, "readyz: store writes failing with >= 3 fires pending")
                assert body["status"] == "not ready"
                assert any("store writes are failing" in p for p in body["problems"]), body
                assert "full" in (body["store"]["last_error"] or ""), body  # "database or disk is full"
                metrics = c.get("/metrics").text
                assert "jobwire_store_write_failing 1.0" in metrics
                assert "jobwire_store_write_failures_total" in metrics

                filler.unlink()

                def recovered() -> dict[str, Any] | None:
                    code, body = readyz(srv)
                    return body if code == 200 and body["store"]["fires_pending"] == 0 else None

                body = eventually_sync(recovered, 60, "readyz to be ready with no fires pending")
                assert body["store"]["failing"] is False

                runs = tick_runs(c)
            assert "jobwire_fires_pending 0.0" in httpx.get(srv.url + "/api/v1/metrics").text
        finally:
            srv.stop()
    times = sorted(datetime.fromisoformat(r["scheduled_at"]) for r in runs)
    counts = collections.Counter(times)
    doubled = {t: n for t, n in counts.items() if n > 1}
    assert not doubled, f"scheduled times with two runs: {doubled}"
    assert len({r["key"] for r in runs}) == len(runs)
    expected = [times[0] + timedelta(seconds=i) for i in range(int((times[-1] - times[0]).total_seconds()) + 1)]
    missing = sorted(set(expected) - set(times))
    assert not missing, f"{len(missing)} fires lost of {len(expected)}: {missing[:10]}"
