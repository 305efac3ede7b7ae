"""CLI commands that talk to a server, run in-process: the CLI's `Client` speaks to the FastAPI app
over Starlette's TestClient (the same httpx interface), on the fake engine of test_api_schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import jobwire.cli
from jobwire.api import create_app
from jobwire.client import Client
from jobwire.model import Event, RunError, RunState
from tests.api.test_api_schema import HELLO, NOW, FakeEngine, StoredJob, add_job, make_run, settings

runner = CliRunner()


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEngine]:
    for k in list(os.environ):
        if k.startswith("JOBWIRE_"):
            monkeypatch.delenv(k)
    eng = FakeEngine(settings())
    with TestClient(create_app(eng)) as http:

        class InProcessClient(Client):
            def __init__(self, url: str | None = None, token: str | None = None, **_: Any) -> None:
                self.url = "http://testserver"
                self._http = http

            def close(self) -> None:  # the TestClient belongs to the fixture
                pass

        monkeypatch.setattr(jobwire.cli, "Client", InProcessClient)
        yield eng


def test_runs_show_prints_no_none(engine: FakeEngine) -> None:
    engine.fake.runs["r1"] = make_run(
        "r1", state=RunState.cancelled, error=RunError(message="cancelled by alice", reason="Cancelled")
    )
    engine.fake.runs["r2"] = make_run(
        "r2",
        state=RunState.failed,
        exit_code=137,
        error=RunError(message="killed", reason="OOMKilled", code=137),
    )
    result = runner.invoke(jobwire.cli.app, ["runs", "show", "r1"])
    assert result.exit_code == 0, result.output
    assert "error    cancelled by alice (Cancelled)" in result.output
    assert "None" not in result.output
    result = runner.invoke(jobwire.cli.app, ["runs", "show", "r2"])
    assert "error    killed (OOMKilled, code 137)" in result.output


def test_jobs_show_leaves_out_unset_fields(engine: FakeEngine) -> None:
    add_job(engine, HELLO)
    result = runner.invoke(jobwire.cli.app, ["jobs", "show", "hello"])
    assert result.exit_code == 0, result.output
    assert "null" not in result.output, result.output
    assert "id: gh" in result.output and "name: who" in result.output
    # --json stays the API's document, nulls included
    json_out = runner.invoke(jobwire.cli.app, ["jobs", "show", "hello", "--json"]).output
    assert '"id": null' in json_out and '"required": null' in json_out


def test_origin_reads_the_same_in_list_and_show(engine: FakeEngine) -> None:
    job = add_job(engine, HELLO)
    engine.fake.jobs["hello"] = StoredJob(job, "file:examples/quickstart.yaml", False, None)
    listed = runner.invoke(jobwire.cli.app, ["jobs", "list"]).output
    shown = runner.invoke(jobwire.cli.app, ["jobs", "show", "hello"]).output
    assert "file:examples/quickstart.yaml" in listed, listed
    assert "origin: file:examples/quickstart.yaml" in shown, shown


def test_square_brackets_in_names_are_printed_not_taken_as_markup(engine: FakeEngine, tmp_path: Any) -> None:
    add_job(engine, HELLO)  # its webhook trigger has the id `gh`: shown as `[gh] webhook`
    listed = runner.invoke(jobwire.cli.app, ["jobs", "list"]).output
    assert "[gh] webhook" in listed, listed
    engine.fake.runs["r1"] = make_run(
        "r1", state=RunState.failed, error=RunError(message="exit [code] 3 [red]", reason="Failed")
    )
    shown = runner.invoke(jobwire.cli.app, ["runs", "show", "r1"]).output
    assert "exit [code] 3 [red] (Failed)" in shown, shown


def test_run_and_event_ids_are_never_cut_short(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """On an 80-column terminal the runs and events tables squeeze other columns, not the ids a
    next command takes (a run id made from a generated key is 35 characters)."""
    monkeypatch.setattr(jobwire.cli, "out", Console(width=80, highlight=False, markup=False, soft_wrap=True))
    long_id = "r66204e2d0209ce1078e58e6d9bdb912dfc"
    engine.fake.runs[long_id] = make_run(long_id, state=RunState.succeeded, exit_code=0)
    listed = runner.invoke(jobwire.cli.app, ["runs", "list"])
    assert listed.exit_code == 0, listed.output
    assert long_id in listed.output, listed.output
    event_id = "e66204e2d0202d832934e202"
    engine.fake.events[event_id] = Event(
        id=event_id, job="hello", trigger="api", source="api", received_at=NOW, run_id=long_id
    )
    listed = runner.invoke(jobwire.cli.app, ["events", "list"])
    assert listed.exit_code == 0, listed.output
    assert long_id in listed.output and event_id in listed.output, listed.output
