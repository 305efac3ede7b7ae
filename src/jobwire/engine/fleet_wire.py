"""The runner fleet's messages as the engine sees them (docs/fleet.md): where the broker is, the
wire (`jobwire.sources.amqp.fleet`, loaded only when a fleet role runs) and the work message a
scheduler publishes for each attempt."""

from __future__ import annotations

import importlib
import json
from typing import Any

from jobwire.model import Job, Run

JOB_FIELDS = {"name", "description", "target", "timeout", "environment", "labels", "parameters"}
"""What a runner gets of a job's definition: enough to run it (its triggers, policies and their
secrets stay with the scheduler)."""


def broker_url() -> str:
    """`BROKER_URL` / `JOBWIRE_AMQP_URL`, as everywhere (the amqp plug's settings)."""
    from jobwire.sources.amqp.spec import DEFAULT_URL, AmqpSettings

    return AmqpSettings().url or DEFAULT_URL


def link_for(url: str, work_queue: str, results_queue: str) -> Any:
    """The wire (`jobwire.sources.amqp.fleet.Link`), imported only when a fleet role runs."""
    module = importlib.import_module("jobwire.sources.amqp.fleet")
    return module.connect(url, work_queue, results_queue)


_JOB_DOCS: dict[int, tuple[Job, dict[str, Any]]] = {}
"""The runner's part of each job definition, by object: definitions are immutable, so it is dumped
once per definition, not once per run (the definition is kept, so its id is not reused)."""


def _job_doc(job: Job) -> dict[str, Any]:
    hit = _JOB_DOCS.get(id(job))
    if hit is not None and hit[0] is job:
        return hit[1]
    if len(_JOB_DOCS) > 20_000:
        _JOB_DOCS.clear()
    doc = job.model_dump(mode="json", include=JOB_FIELDS)
    _JOB_DOCS[id(job)] = (job, doc)
    return doc


def work_message(run: Run, job: Job, name: str, resumed: bool, callback_url: str, token: str) -> bytes:
    doc = {
        "v": 1,
        "name": name,
        "resumed": resumed,
        "run": run.model_dump(mode="json", exclude={"history"}),
        "job": _job_doc(job),
        "callback_url": callback_url,
        "callback_token": token,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


__all__ = ["JOB_FIELDS", "broker_url", "link_for", "work_message"]
