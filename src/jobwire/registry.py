"""Every plug kind jobwire knows, one line each. Adding a source kind: its package under
`jobwire/sources/<kind>/` and one line here.

Imported at the end of `jobwire.model` (a job's `triggers` accept every kind listed here), so the
`spec` modules imported below must import only `jobwire.model` and `jobwire.plug`.
"""

from __future__ import annotations

from typing import Any

from jobwire.plug import SourcePlug, extra_problem
from jobwire.sources.amqp.spec import PLUG as AMQP
from jobwire.sources.mqtt.spec import PLUG as MQTT
from jobwire.sources.postgres.spec import PLUG as POSTGRES
from jobwire.sources.s3.spec import PLUG as S3
from jobwire.sources.sqs.spec import PLUG as SQS

SOURCES: tuple[SourcePlug, ...] = (
    AMQP,
    MQTT,
    POSTGRES,
    SQS,
    S3,
)


def source_plug(kind: str) -> SourcePlug | None:
    return next((p for p in SOURCES if p.kind == kind), None)


def plug_triggers() -> tuple[type[Any], ...]:
    """The trigger models the source kinds add to job definitions."""
    return tuple(p.trigger for p in SOURCES if p.trigger is not None)


def plug_settings() -> dict[str, Any]:
    """Each source kind's settings section, read from the environment now."""
    return {p.kind: p.settings() for p in SOURCES if p.settings is not None}


TARGET_EXTRAS: dict[str, str] = {"kubernetes": "kubernetes", "spot": "aws"}
"""Target kinds whose client library comes with a pip extra (`local` and `http` are the core)."""


def job_problems(job: Any) -> list[tuple[str, str]]:
    """(field path, message) for each trigger and the target of `job` (a `jobwire.model.Job`)
    whose pip extra is not installed here: the job loads, but that part cannot run."""
    out: list[tuple[str, str]] = []
    for index, trigger in enumerate(job.triggers):
        plug = source_plug(trigger.type)
        problem = plug.problem() if plug is not None else None
        if problem is not None:
            out.append((f"triggers[{index}]", problem))
    kind = job.target.type
    if kind in TARGET_EXTRAS:
        problem = extra_problem(f"the {kind} target", TARGET_EXTRAS[kind])
        if problem is not None:
            out.append(("target", problem))
    return out
